"""The output files of one run, written as one transaction: all of them, or none.

Every output is planned before any model runs: its path is checked against the input, the
other outputs of the run (no two may be one file) and existing files, and its folder is
checked for writability. The files are then written to temporaries beside their targets,
and only when every one is complete are they renamed into place, with interrupts held back
for the few renames. On any failure or interrupt before that, the temporaries (and any
folders the run created) are removed, and files that existed before are left as they were.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from salip.core.errors import OutputError
from salip.io.writing import check_output, file_mode, temporary_beside, write_problem

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

    def stage(self, path: str | Path, write: Callable[[Path], None]) -> None:
        """Write a planned output to a temporary file beside it: ``write(tmp_path)``."""
        output = self._outputs.get(_identity(Path(path)))
        if output is None:
            raise OutputError(f"{path} was not planned as an output of this run.")
        self._make_parents(output.path.parent)
        tmp = temporary_beside(output.path)
        output.tmp = tmp
        write(tmp)
        os.chmod(tmp, file_mode())

    def commit(self) -> list[Path]:
        """Rename every staged file into place; on failure, put everything back.

        SIGINT and SIGTERM received during the renames take effect after them, so an
        interrupt never leaves part of the set.

        Returns:
            The paths written, in the order they were added.
        """
        staged = [o for o in self._outputs.values() if o.tmp is not None]
        done: list[tuple[_Output, Path | None]] = []
        with _interrupts_deferred():
            try:
                for output in staged:
                    backup = None
                    if output.path.exists():
                        backup = temporary_beside(output.path)
                        os.replace(output.path, backup)
                    done.append((output, backup))
                    os.replace(output.tmp, output.path)  # type: ignore[arg-type]
            except BaseException:
                _roll_back(done)
                raise
            self._committed = True
            for _, backup in done:
                if backup is not None:
                    backup.unlink(missing_ok=True)
        return [o.path for o in staged]

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


def _identity(path: Path) -> str:
    """One key per file: symbolic links, ``..`` and case (where it is ignored) resolved."""
    return os.path.normcase(os.path.realpath(path))


def _roll_back(done: list[tuple[_Output, Path | None]]) -> None:
    """Undo renames of :meth:`OutputSet.commit`, newest first."""
    for output, backup in reversed(done):
        try:
            if output.tmp is not None and output.path.exists() and not output.tmp.exists():
                os.replace(output.path, output.tmp)  # the new file goes back to its temporary
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
