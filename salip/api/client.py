"""``salip.Client``: submit scans to a ``salip serve`` server, wait for them, download the
results; and :func:`segment_remote`, ``salip segment --server``.

Every request is bounded in time. A server that cannot be reached (restarting after a
crash, a ``kill -9``) is retried with backoff for ``retry_s`` seconds before the call
fails, so a restart costs a waiting client nothing but time. A submission is retried only
when the connection could not be made at all, so a job is never submitted twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from salip.api.pipeline import OutputRequest, output_paths, output_suffix
from salip.api.provenance import source_record
from salip.api.service import API_PREFIX, FINAL_STATES, job_settings, read_token
from salip.core.errors import ConfigError, ServiceError, one_line
from salip.io.output_set import OutputSet
from salip.io.writing import json_text, sidecar_path

__all__ = ["Client", "segment_remote"]

logger = logging.getLogger(__name__)


class Client:
    """A client of one salip server.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8765``.
        token: the bearer token; default: read from ``token_file`` when given, else
            ``$SALIP_TOKEN``, else ``$SALIP_HOME/serve/token``.
        token_file: the file holding the token.
        timeout: seconds one request may take.
        retry_s: seconds to keep retrying a server that cannot be reached.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        token_file: str | Path | None = None,
        timeout: float = 60.0,
        retry_s: float = 300.0,
    ) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {url!r} must start with http:// or https://.")
        if token is None:  # a file named here wins over the environment
            env = None if token_file is not None else os.environ.get("SALIP_TOKEN")
            token = env or read_token(token_file)
        self.url, self.retry_s = url.rstrip("/"), retry_s
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        source: str | Path,
        *,
        organs: str | Sequence[str],
        outputs: Sequence[str] = ("mask",),
        **settings: Any,
    ) -> str:
        """Upload a scan and queue its job; returns the job id.

        Args:
            source: a NIfTI file, a DICOM folder (zipped here) or .zip, or a 2D image.
            organs: organ names or free text, as :func:`salip.segment` takes them.
            outputs: the output kinds (:data:`salip.api.service.OUTPUT_KINDS`).
            settings: settings for this job, by their flat names (``strategy="slices"``);
                the server's operator sets the models and limits.

        Raises:
            ServiceError: the server refused the job (the reason from the server).
        """
        request = {
            "organs": [organs] if isinstance(organs, str) else list(organs),
            "outputs": list(outputs),
            "settings": settings,
        }
        with _upload_file(Path(source)) as (path, name), open(path, "rb") as handle:
            answer = self._call(
                "POST",
                "/jobs",
                once=True,
                files={"file": (name, handle, "application/octet-stream")},
                data={"request": json.dumps(request)},
            )
        return str(answer.json()["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's state, progress, error and timings (``GET /v1/jobs/{id}``)."""
        return dict(self._call("GET", f"/jobs/{job_id}").json())

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 6 * 3600.0,
        poll_s: float = 1.0,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job until it is done, failed or cancelled; returns its last status.

        Args:
            timeout: seconds to wait in all.
            poll_s: seconds between polls at first (growing to 5).
            progress: called with each status polled.

        Raises:
            ServiceError: the job did not end within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if progress is not None:
                progress(status)
            if status["state"] in FINAL_STATES:
                return status
            if time.monotonic() + poll_s > deadline:
                raise ServiceError(
                    f"job {job_id} is still {status['state']} after {timeout:.0f} s; wait for "
                    "it again with its id."
                )
            time.sleep(poll_s)
            poll_s = min(poll_s * 1.5, 5.0)

    def download(self, job_id: str, kind: str, path: str | Path) -> Path:
        """Write output ``kind`` of a finished job to ``path``."""
        answer = self._call("GET", f"/jobs/{job_id}/files/{kind}")
        path = Path(path)
        path.write_bytes(answer.content)
        return path

    def delete(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job, or delete a finished one and its files."""
        return dict(self._call("DELETE", f"/jobs/{job_id}").json())

    def targets(self) -> list[dict[str, Any]]:
        """The server's vocabulary: every target it can segment."""
        return list(self._call("GET", "/targets").json()["targets"])

    def _call(self, method: str, route: str, *, once: bool = False, **kwargs: Any) -> Any:
        """One API request, retried with backoff while the server cannot be reached (with
        ``once``: only when no connection was made). Raises ServiceError on a 4xx/5xx."""
        import httpx

        url = f"{API_PREFIX}{route}"
        deadline, pause = time.monotonic() + self.retry_s, 0.25
        retried = (httpx.ConnectError, httpx.ConnectTimeout)
        if not once:
            retried += (httpx.ReadError, httpx.RemoteProtocolError, httpx.ReadTimeout)
        while True:
            try:
                answer = self._http.request(method, url, **kwargs)
            except retried as exc:
                problem = f"{type(exc).__name__}: {one_line(exc)}"
            except httpx.HTTPError as exc:
                raise ServiceError(f"{method} {self.url}{url}: {one_line(exc)}") from exc
            else:
                if answer.status_code != 503 or once:
                    return _checked(answer, method, self.url + url)
                problem = "503 " + _reason(answer)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(
                    f"cannot reach the salip server at {self.url} for {self.retry_s:.0f} s "
                    f"({problem}); is `salip serve` running?"
                )
            logger.info("salip server at %s: %s; retrying in %.1f s", self.url, problem, pause)
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 8.0)


def _reason(answer: Any) -> str:
    """The server's one-line error of a refused request."""
    try:
        return str(answer.json()["error"])
    except Exception:  # noqa: BLE001 - not salip's JSON: a proxy's page, say
        return one_line(answer.text) or answer.reason_phrase


def _checked(answer: Any, method: str, url: str) -> Any:
    if answer.status_code >= 400:
        raise ServiceError(f"{method} {url}: {answer.status_code} {_reason(answer)}")
    return answer


@contextlib.contextmanager
def _upload_file(source: Path) -> Iterator[tuple[Path, str]]:
    """(file to upload, its name): the file itself, or a DICOM folder zipped into a
    temporary file (removed afterwards)."""
    if not source.exists():
        raise ConfigError(f"{source} does not exist; give a scan file, DICOM folder or .zip.")
    if not source.is_dir():
        yield source, source.name
        return
    with tempfile.TemporaryDirectory(prefix="salip-upload-") as folder:
        archive = Path(folder) / f"{source.name}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    zipped.write(path, path.relative_to(source).as_posix())
        yield archive, archive.name


def segment_remote(
    client: Client,
    source: str | Path,
    *,
    organs: str | Sequence[str],
    output: str | Path | None = None,
    overwrite: bool = False,
    preview: str | Path | None = None,
    report: str | Path | None = None,
    output_type: str | None = None,
    statistics: str | Path | None = None,
    viewer: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> list[Path]:
    """:func:`salip.segment` on a server: the same files, named as a local run names them,
    written as one transaction (all of them, or none). Returns the files written.

    Raises:
        ConfigError: a setting only the server's operator sets.
        ServiceError: the server refused or failed the job, or could not be reached.
    """
    source = Path(source)
    server_only = sorted(set(settings) - set(job_settings()))
    if server_only:
        raise ConfigError(
            f"{', '.join(server_only)}: set by the server's operator (salip serve flags), not "
            "per job; drop them with --server."
        )
    request = OutputRequest(output, False, True, output_type, preview, report, statistics, viewer)
    mask, _ = output_paths(source, output, [], False, output_suffix(source, request))
    files = {"seg" if request.kind() == "dicom-seg" else "mask": mask}
    if "mask" in files:
        files["labels"] = sidecar_path(mask)  # type: ignore[arg-type]
    extra = {"preview": preview, "report": report, "statistics": statistics, "viewer": viewer}
    files |= {kind: Path(path) for kind, path in extra.items() if path is not None}
    with OutputSet(source, overwrite=overwrite) as out:
        for kind, path in files.items():
            out.add(path, kind)  # type: ignore[arg-type]
        out.check_writable()
        job = client.submit(source, organs=organs, outputs=sorted(files), **settings)
        logger.info("job %s submitted to %s", job, client.url)
        status = client.wait(job, progress=progress)
        if status["state"] != "done":
            raise ServiceError(f"job {job} {status['state']}: {status.get('error') or 'cancelled'}")
        for kind, path in files.items():
            if kind == "labels":  # rewritten to name the local input
                out.stage(path, functools.partial(_local_sidecar, client, job, source))
            else:
                out.stage(path, functools.partial(client.download, job, kind))
        return out.commit()


def _local_sidecar(client: Client, job: str, source: Path, path: Path) -> None:
    """The mask's sidecar, its source record naming the local input (the server's names
    its copy of the upload), as a local run writes it."""
    client.download(job, "labels", path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    series = (payload.get("source") or {}).get("series")
    payload["source"] = source_record(source, series)
    path.write_text(json_text(payload), encoding="utf-8")
