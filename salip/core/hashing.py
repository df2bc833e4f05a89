"""SHA-256 of files and of settings, the one place salip computes either."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = [
    "file_sha256",
    "fingerprint",
]

_CHUNK = 1 << 20

#: (resolved path, size, modification time in ns) -> hex digest, for this process.
_MEMO: dict[tuple[str, int, int], str] = {}


def _bytes_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks; of a folder (a DICOM series):
    of its files' relative names and digests, in sorted order.

    Remembered per process by (path, size, modification time), so a checkpoint of
    gigabytes is read once per run however often it is asked for.
    """
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _MEMO:
        if path.is_dir():
            digest = hashlib.sha256()
            for item in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(f"{item.relative_to(path).as_posix()}:{_bytes_sha256(item)}".encode())
            _MEMO[key] = digest.hexdigest()
        else:
            _MEMO[key] = _bytes_sha256(path)
    return _MEMO[key]


def fingerprint(value: Any) -> str:
    """Hex SHA-256 of ``value`` as canonical JSON (sorted keys; other types as ``str``).

    Tuples and lists give the same fingerprint, so does a dict in any key order.
    """
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
