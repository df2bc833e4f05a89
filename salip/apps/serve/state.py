"""A server's settings and the state its routes share: the data folder, the job store,
the dispatcher and the token; and :func:`open_server`, which recovers the folder after a
crash before any job runs.

The data folder holds ``jobs.sqlite3`` (the queue, :mod:`salip.apps.serve.store`),
``jobs/<id>/`` (a job's scan as ``input.*``, its outputs in ``out/``, and while it runs
``progress.json``, its stages so far) and ``uploads/``
(uploads being received; emptied at start).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from salip.api.service import read_token
from salip.apps.serve.store import JobStore
from salip.apps.serve.worker import Dispatcher
from salip.core.config import ClusterConfig, SegmentConfig
from salip.core.errors import ConfigError

__all__ = ["ServeConfig", "ServerState", "open_server"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """How ``salip serve`` runs.

    Attributes:
        host: the address to bind (127.0.0.1: this machine only).
        port: the TCP port.
        data: the data folder (jobs database, uploads, outputs).
        token_file: the bearer token's file; None: ``$SALIP_HOME/serve/token``, created
            (mode 0600) if absent.
        max_upload: bytes an upload may have (413 past it).
        upload_timeout_s: seconds an upload may take to arrive (408 past it).
        max_attempts: starts of a job before a server that keeps dying while it runs fails
            it (1 + retries).
        checks: uploads checked (read) at once; each holds its scan in memory.
        cors: origins allowed to call the API from a browser; () turns CORS off.
        max_connections: connections served at once (503 past it).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    data: Path = Path("salip-serve")
    token_file: Path | None = None
    max_upload: int = 2 * 2**30
    upload_timeout_s: float = 600.0
    max_attempts: int = 3
    checks: int = 2
    cors: tuple[str, ...] = field(default_factory=tuple)
    max_connections: int = 64

    def validate(self) -> None:
        """Raise :class:`ConfigError` with the fix for a setting out of range."""
        checks = [
            (0 < self.port < 65536, "--port must be 1-65535"),
            (self.max_upload >= 1, "--max-upload must be at least 1 MiB"),
            (self.upload_timeout_s > 0, "--upload-timeout must be positive"),
            (self.max_attempts >= 1, "--max-attempts must be at least 1"),
            (self.checks >= 1, "--checks must be at least 1"),
            (self.max_connections >= 4, "--max-connections must be at least 4"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message}.")


@dataclass
class ServerState:
    """What the routes share (see the module docstring)."""

    config: ServeConfig
    defaults: SegmentConfig
    cluster: ClusterConfig
    store: JobStore
    dispatcher: Dispatcher
    token: str
    checking: asyncio.Semaphore

    @property
    def jobs_folder(self) -> Path:
        return self.config.data / "jobs"

    @property
    def uploads_folder(self) -> Path:
        return self.config.data / "uploads"


def open_server(
    config: ServeConfig, defaults: SegmentConfig, cluster: ClusterConfig
) -> ServerState:
    """Open (or create) the data folder, recover it after a crash, and make the state.

    Recovery: uploads that were being received are removed; a job left running is queued
    again with its half-written outputs removed (or failed after ``max_attempts`` starts);
    folders of jobs the database does not hold are removed. The workers are not started.

    Raises:
        ConfigError: bad settings, an unusable data folder or token file.
    """
    config.validate()
    cluster.validate()
    defaults.validate()
    data = config.data
    try:
        for folder in (data, data / "jobs", data / "uploads"):
            folder.mkdir(parents=True, exist_ok=True)
        store = JobStore(data / "jobs.sqlite3", max_attempts=config.max_attempts)
    except OSError as exc:
        raise ConfigError(f"cannot use the data folder {data}: {exc.strerror or exc}.") from exc
    token = read_token(config.token_file, create=True)
    _recover(data, store)
    dispatcher = Dispatcher(store, data / "jobs", defaults, cluster)
    checking = asyncio.Semaphore(config.checks)
    return ServerState(config, defaults, cluster, store, dispatcher, token, checking)


def _recover(data: Path, store: JobStore) -> None:
    """See :func:`open_server`."""
    for upload in (data / "uploads").iterdir():
        shutil.rmtree(upload, ignore_errors=True)
    requeued, failed = store.recover()
    for job_id in (*requeued, *failed):
        shutil.rmtree(data / "jobs" / job_id / "out", ignore_errors=True)
    if requeued or failed:
        logger.warning(
            "recovered after a stop: %d running job(s) queued again, %d failed",
            len(requeued),
            len(failed),
        )
    known = store.ids()
    for folder in (data / "jobs").iterdir():
        if folder.name not in known:
            shutil.rmtree(folder, ignore_errors=True)
