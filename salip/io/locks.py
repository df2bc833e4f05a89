"""Locks that coordinate runs writing into one output folder.

One empty file, ``<folder>/.salip.lock``, carries POSIX record locks (``fcntl.lockf``): a
byte per case (at an offset from a hash of the case's name) and byte 0 for ``run.csv``.
The operating system drops a process's locks when it ends, however it ends, so a killed run
never leaves a folder locked; the file itself stays, and locks nothing by being there.
Record locks also work on NFS (through its lock manager), where Ray workers on several
machines share an output folder.

POSIX record locks belong to a process, and closing any descriptor of the file drops all of
that process's locks on it, so each process opens the file once and keeps it open. They do
not exclude threads of one process from each other; salip runs one case at a time per
process. Where ``fcntl`` is missing (Windows) the locks always succeed, and the outputs'
no-replace commit (:class:`~salip.io.output_set.OutputSet`) remains the guard.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LOCK_NAME",
    "case_lock",
    "table_lock",
]

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: The lock file's name in an output folder.
LOCK_NAME = ".salip.lock"

_OPEN: dict[str, int] = {}
_GUARD = threading.Lock()


def _descriptor(folder: Path) -> int:
    """This process's descriptor of ``folder``'s lock file, opened once and kept open."""
    path = os.path.realpath(folder / LOCK_NAME)
    with _GUARD:
        if path not in _OPEN:
            _OPEN[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        return _OPEN[path]


def _offset(name: str) -> int:
    """The byte of case ``name``: 1 + the first 7 bytes of its SHA-256 (never byte 0)."""
    return 1 + int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:7], "big")


def _lock(fd: int, offset: int, *, wait: bool) -> bool:
    flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.lockf(fd, flags, 1, offset, os.SEEK_SET)
    except (BlockingIOError, PermissionError):  # held by another process
        return False
    return True


@contextlib.contextmanager
def case_lock(folder: Path, name: str) -> Iterator[bool]:
    """Try to lock case ``name`` of ``folder`` for this process, without waiting.

    Yields:
        True if this process holds the lock for the block, False if another process holds
        it (the case is being written by another run).
    """
    if fcntl is None:
        yield True
        return
    fd, offset = _descriptor(folder), _offset(name)
    got = _lock(fd, offset, wait=False)
    try:
        yield got
    finally:
        if got:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


@contextlib.contextmanager
def table_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s run.csv lock for the block, waiting for another run's update."""
    if fcntl is None:
        yield
        return
    fd = _descriptor(folder)
    _lock(fd, 0, wait=True)
    try:
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0, os.SEEK_SET)
