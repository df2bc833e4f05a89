"""The output files of one run, written as one transaction: all of them, or none.

Every output is planned before any model runs: its path is checked against the input, the
other outputs of the run (no two may be one file) and existing files, its name (and its
temporary's) against the file system's name length, and its folder for writability. The
files are then written to temporaries beside their targets, and only when every one is
complete are they moved into place, with interrupts held back for the few moves. On any
failure or interrupt before that, the temporaries (and any folders the run created) are
removed, and files that existed before are left as they were.

Without ``overwrite`` the move never replaces a file, even one that appeared after
planning (another run writing into the same folder): each file is hard-linked to its name,
which fails if the name exists, and the temporary unlinked. Where the file system has no
hard links, an existence check just before ``os.replace`` narrows the window instead. With
``overwrite`` an existing file is moved aside, replaced, and deleted once all are in place.

Every operating-system error is an :class:`~salip.core.errors.OutputError` that names the
file and the cause (``No space left on device``, ``File name too long``, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from salip.core.errors import OutputError
from salip.io.writing import (
    check_output,
    file_mode,
    name_problem,
    nearest_existing,
    os_problem,
    temporary_beside,
    write_problem,
)

__all__ = [
    "OutputSet",
]

logger = logging.getLogger(__name__)


@dataclass
class _Output:
    path: Path
    role: str
    tmp: Path | None = None


class OutputSet:
    """Plan, check, write and commit the outputs of one run.

    Use as a context manager: leaving it by an exception removes what was staged::

        with OutputSet(input_path, overwrite=False) as outputs:
            outputs.add(Path("m.nii.gz"), "-o")
            outputs.check_writable()
            ...  # run the models
            outputs.stage(Path("m.nii.gz"), lambda tmp: save(tmp))
            written = outputs.commit()
    """

    def __init__(self, input_path: Path, *, overwrite: bool) -> None:
        self.input_path = Path(input_path)
        self.overwrite = overwrite
        self._outputs: dict[str, _Output] = {}
        self._created_dirs: list[Path] = []
        self._committed = False

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._committed:
            self.abort()

    def add(self, path: str | Path, role: str) -> Path:
        """Plan one output; ``role`` names it in messages (e.g. "--report").

        Raises:
            OutputError: the path is the input or inside it, exists (without overwrite),
                is a folder, or is the same file as another output of the run.
        """
        path = Path(path)
        check_output(path, self.input_path, self.overwrite)
        problem = name_problem(path)
        if problem is not None:
            raise OutputError(f"{role} {path}: {problem}; choose a shorter name or folder.")
        key = _identity(path)
        other = self._outputs.get(key)
        if other is not None:
            raise OutputError(
                f"{role} {path} and {other.role} {other.path} are the same file; give each "
                "output its own name."
            )
        self._outputs[key] = _Output(path, role)
        return path

    def check_writable(self) -> None:
        """Check that a file can be created in every output's folder, creating nothing.

        A folder that does not exist yet is judged by its nearest existing parent.

        Raises:
            OutputError: a folder is not writable, or a parent of it is a file.
        """
        checked: set[Path] = set()
        for output in self._outputs.values():
            folder = output.path.parent
            if folder in checked:
                continue
            checked.add(folder)
            problem = write_problem(folder)
            if problem is not None:
                raise OutputError(
                    f"{output.role} {output.path}: {problem}; choose another output folder."
                )

    def check_space(self, estimate: int) -> None:
        """Check that the output folders' file systems have ``estimate`` bytes free (an
        estimate of what the run writes), before any model runs.

        Raises:
            OutputError: less is free; names the folder, what is free and the estimate.
        """
        folders = {o.path.parent for o in self._outputs.values()}
        for folder in sorted(folders):
            try:
                free = shutil.disk_usage(nearest_existing(folder)).free
            except OSError:
                continue  # not measurable here; a full disk still fails the write, in one line
            if free < estimate:
                raise OutputError(
                    f"{folder}: {free / 2**20:.1f} MiB free, and this run's outputs need about "
                    f"{estimate / 2**20:.1f} MiB; free some space or write elsewhere."
                )

    def stage(self, path: str | Path, write: Callable[[Path], None]) -> None:
        """Write a planned output to a temporary file beside it: ``write(tmp_path)``."""
        output = self._outputs.get(_identity(Path(path)))
        if output is None:
            raise OutputError(f"{path} was not planned as an output of this run.")
        try:
            self._make_parents(output.path.parent)
            output.tmp = temporary_beside(output.path)
            write(output.tmp)
            os.chmod(output.tmp, file_mode())
        except OSError as exc:
            raise OutputError(f"cannot write {output.path}: {os_problem(exc)}.") from exc

    def commit(self) -> list[Path]:
        """Rename every staged file into place; on failure, put everything back.

        SIGINT and SIGTERM received during the renames take effect after them, so an
        interrupt never leaves part of the set.

        Returns:
            The paths written, in the order they were added.

        Raises:
            OutputError: without ``overwrite``, a file appeared at an output's name since
                planning (nothing is replaced, nothing of the set is left); or the file
                system refused a move.
        """
        staged = [o for o in self._outputs.values() if o.tmp is not None]
        done: list[tuple[_Output, Path | None]] = []
        with _interrupts_deferred():
            try:
                for output in staged:
                    done.append((output, self._place(output)))
            except BaseException as exc:
                _roll_back(done)
                if isinstance(exc, OSError):
                    where = exc.filename or staged[len(done)].path
                    raise _commit_error(where, exc) from exc
                raise
            self._committed = True
            for _, backup in done:
                if backup is not None:
                    backup.unlink(missing_ok=True)
        return [o.path for o in staged]

    def _place(self, output: _Output) -> Path | None:
        """Move one staged file into place; the backup of the file it replaced, if any."""
        tmp = output.tmp
        if tmp is None:
            raise OutputError(f"{output.path} was not staged before the commit.")
        if not self.overwrite:
            try:
                os.link(tmp, output.path)  # fails if the name exists: never a replace
            except FileExistsError as exc:
                exc.filename = str(output.path)
                raise
            except OSError:  # no hard links here: check, then move (a narrow window)
                if output.path.exists():
                    raise FileExistsError(17, "File exists", str(output.path)) from None
                os.replace(tmp, output.path)
                return None
            tmp.unlink()
            return None
        backup = None
        if output.path.exists():
            backup = temporary_beside(output.path)
            os.replace(output.path, backup)
        os.replace(tmp, output.path)
        return backup

    def abort(self) -> None:
        """Remove the staged temporaries and the folders this run created."""
        for output in self._outputs.values():
            if output.tmp is not None:
                output.tmp.unlink(missing_ok=True)
                output.tmp = None
        for folder in reversed(self._created_dirs):
            with contextlib.suppress(OSError):  # not empty: something else lives there
                folder.rmdir()
        self._created_dirs.clear()

    def _make_parents(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self._created_dirs.append(path)


def _commit_error(path: object, exc: OSError) -> OutputError:
    """The one-line error of a failed move into place."""
    if isinstance(exc, FileExistsError):
        return OutputError(
            f"{path} appeared while this run was writing (another run writing into the same "
            "folder?); it was not replaced, and nothing of this run was kept; pass "
            "--overwrite to replace it."
        )
    return OutputError(f"cannot write {path}: {os_problem(exc)}; nothing of this run was kept.")


def _identity(path: Path) -> str:
    """One key per file: symbolic links, ``..`` and case (where it is ignored) resolved."""
    return os.path.normcase(os.path.realpath(path))


def _roll_back(done: list[tuple[_Output, Path | None]]) -> None:
    """Undo renames of :meth:`OutputSet.commit`, newest first."""
    for output, backup in reversed(done):
        try:
            if output.tmp is not None and output.path.exists() and not output.tmp.exists():
                os.replace(output.path, output.tmp)  # the new file goes back to its temporary
            elif output.tmp is not None and output.tmp.exists() and output.path.exists():
                output.path.unlink()  # hard-linked: the temporary still holds the new file
            if backup is not None:
                os.replace(backup, output.path)
        except OSError as exc:  # nothing more can be done; say where the old file is
            logger.error(
                "could not restore %s (%s); its old content is in %s", output.path, exc, backup
            )


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on the first one received.

    Python runs signal handlers in the main thread only, so this is done there (elsewhere
    the block runs unprotected).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in wanted}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])
