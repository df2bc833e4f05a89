"""Download official SAM checkpoints into the cache, verified by SHA-256.

The file is streamed to a temporary name in the cache folder and renamed into place only
after its SHA-256 matches, so an interrupted or corrupt transfer never leaves a file that
would later load as a valid checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from salip.core.errors import DownloadError
from salip.io.writing import file_mode, temporary_beside
from salip.models.registry import OFFICIAL_BASE_URL, SAM_CHECKPOINTS, CheckpointInfo, checkpoint_dir

__all__ = [
    "download_checkpoint",
    "download_file",
    "list_cached",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _temporary(dest: Path) -> Path:
    """An empty ``.part`` file beside ``dest``, its folder created if missing.

    Raises:
        DownloadError: the folder cannot be created or written (one line, with the fix).
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return temporary_beside(dest, suffix=".part")
    except OSError as exc:
        raise DownloadError(
            f"cannot write to {dest.parent} ({exc.strerror or exc}); set SALIP_HOME to a "
            "writable folder."
        ) from exc


def _stream(
    url: str,
    out: Any,
    digest: Any,
    name: str,
    expected: int | None,
    *,
    progress: bool,
    timeout: float,
) -> int:
    """Copy ``url`` into the open file ``out``, updating ``digest``; the bytes received.

    ``name`` labels the progress bar; ``expected`` is its total when the server sends no
    Content-Length.

    Raises:
        DownloadError: the server cannot be reached, or the transfer breaks off or ends
            short of its Content-Length. Errors writing ``out`` propagate as OSError.
    """
    from tqdm.auto import tqdm

    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http/https URL)
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}.") from exc
    received = 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length else expected
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, ValueError) as exc:  # IncompleteRead, reset, timeout
                    raise DownloadError(
                        f"transfer of {url} broke off after {received} bytes: {exc}."
                    ) from exc
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if length and received != int(length):
        raise DownloadError(
            f"transfer of {url} ended after {received} of {length} bytes; try again."
        )
    return received


def download_file(
    url: str,
    dest: Path,
    sha256: str,
    *,
    expected_size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking its SHA-256.

    The file gets the umask's normal mode (:func:`salip.io.writing.file_mode`).

    Raises:
        DownloadError: network failure, short transfer, a folder or disk that cannot be
            written, or hash mismatch. Nothing is left at ``dest`` or beside it in any of
            these cases.
    """
    tmp = _temporary(dest)
    digest = hashlib.sha256()
    try:
        try:
            with open(tmp, "wb") as out:
                received = _stream(
                    url, out, digest, dest.name, expected_size, progress=progress, timeout=timeout
                )
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:  # writing the file: reading errors are DownloadErrors
            raise DownloadError(
                f"cannot write {dest} ({exc.strerror or exc}); free disk space there or set "
                "SALIP_HOME to another folder."
            ) from exc
        actual = digest.hexdigest()
        if actual != sha256:
            raise DownloadError(
                f"{url}: SHA-256 {actual} does not match the expected {sha256}; the file was "
                "discarded. Check the URL or mirror and try again."
            )
        os.chmod(tmp, file_mode())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("downloaded %s (%d bytes) to %s", url, received, dest)
    return dest


def download_checkpoint(
    name: str,
    *,
    base_url: str = OFFICIAL_BASE_URL,
    dest_dir: Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Download the official SAM checkpoint ``name`` (vit_b, vit_l, vit_h) into the cache.

    Args:
        name: checkpoint name.
        base_url: where the files live (a mirror may replace Meta's server).
        dest_dir: target folder; default ``<SALIP_HOME>/checkpoints``.
        force: download again even if a verified file is present.
        progress: show a progress bar.

    Returns:
        The checkpoint's path.
    """
    if name not in SAM_CHECKPOINTS:
        raise DownloadError(
            f"unknown checkpoint '{name}'; choose from {', '.join(SAM_CHECKPOINTS)}."
        )
    info: CheckpointInfo = SAM_CHECKPOINTS[name]
    dest = (dest_dir or checkpoint_dir()) / info.filename
    if dest.is_file() and not force:
        logger.info("%s already cached at %s", name, dest)
        return dest
    return download_file(
        info.url(base_url), dest, info.sha256, expected_size=info.size, progress=progress
    )


def list_cached() -> list[dict[str, object]]:
    """One row per official checkpoint: name, file, whether cached, size on disk."""
    rows = []
    for name, info in SAM_CHECKPOINTS.items():
        path = checkpoint_dir() / info.filename
        rows.append(
            {
                "name": name,
                "file": str(path),
                "cached": path.is_file(),
                "bytes": path.stat().st_size if path.is_file() else None,
            }
        )
    return rows
