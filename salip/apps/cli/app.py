"""The ``salip`` command line: the top parser, logging, and running a command.

Every settings flag is generated from a field of the stage configs in :mod:`salip.core.config`
(``--points-per-side`` <-> ``ProposalConfig.points_per_side``, see
:mod:`salip.apps.cli.flags`), and the commands call the library with keyword arguments.
Each command is a module with ``add_parser(sub, common)`` and its ``run`` functions, its
imports at its top: only the command that runs is imported (:func:`build_parser`), so
``salip organs`` never loads torch. Errors are one line and a non-zero exit; ``-v`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from salip.core.errors import SalipError, one_line
from salip.version import __version__

__all__ = [
    "COMMANDS",
    "build_parser",
    "Command",
    "main",
]

logger = logging.getLogger("salip")


@dataclass(frozen=True)
class Command:
    """A ``salip`` command: the module that builds and runs it, and its one-line help."""

    module: str
    help: str


#: The commands, in the order ``salip --help`` lists them.
COMMANDS: dict[str, Command] = {
    "segment": Command(
        "salip.apps.cli.segment", "Segment organs in a NIfTI volume, DICOM series or 2D image."
    ),
    "proposals": Command(
        "salip.apps.cli.proposals",
        "Write SAM everything-mode proposals of one image or slice as JSON.",
    ),
    "benchmark": Command(
        "salip.apps.cli.benchmark",
        "Score salip and its baselines against datasets with reference masks.",
    ),
    "bench-speed": Command(
        "salip.apps.cli.bench_speed",
        "Time salip against the SaLIP reference cost structure on one volume.",
    ),
    "bench-units": Command(
        "salip.apps.cli.bench_units",
        "Measure SAM's unit costs: encoder per slice, everything mode per slice, box prompt.",
    ),
    "serve": Command(
        "salip.apps.cli.serve",
        "Run an HTTP segmentation service with a job queue that survives restarts.",
    ),
    "napari": Command(
        "salip.apps.cli.napari",
        "Open napari with salip's widget docked and the given scans loaded.",
    ),
    "head": Command("salip.apps.cli.head", "Train the learned comparator head on SAM features."),
    "models": Command("salip.apps.cli.models", "Download or list SAM checkpoints."),
    "organs": Command(
        "salip.apps.cli.organs",
        "List the organs salip knows, or their values in a public label set.",
    ),
    "prompts": Command("salip.apps.cli.prompts", "Generate, list or show description prompts."),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top ``salip`` parser.

    Args:
        only: the command to build in full (its module is imported); the others are listed
            with their help only. None: every command in full.
    """
    parser = argparse.ArgumentParser(
        prog="salip",
        description="Zero-shot organ segmentation with a SAM + CLIP cascade (SaLIP).",
    )
    parser.add_argument("--version", action="version", version=f"salip {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="More logging; tracebacks on errors."
    )
    common.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(command.module).add_parser(sub, common)
        else:
            sub.add_parser(name, help=command.help)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (the first argument that is one), or None."""
    return next((arg for arg in argv if arg in COMMANDS), None)


class _OneLine(logging.Formatter):
    """Other libraries' messages (and Python warnings, see :func:`_setup_logging`) on one
    line: highdicom's run over several."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.name.startswith("salip"):
            return text
        joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
        return joined if len(joined) <= 300 else joined[:297].rstrip() + "..."


def _setup_logging(verbose: int, quiet: bool) -> None:
    """salip's messages at INFO (-v: DEBUG, -q: WARNING); other libraries' warnings, Python
    warnings included, one line each, and none with -q (-v: as they come)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    pattern = "%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"
    handler.setFormatter(logging.Formatter(pattern) if verbose else _OneLine(pattern))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    logging.getLogger("salip").setLevel(level)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``salip`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", 0)
    _setup_logging(verbose, getattr(args, "quiet", False))
    with _terminate_as_interrupt():
        return _run(args, verbose)


def _run(args: argparse.Namespace, verbose: int) -> int:
    """Run the command; every error becomes one line on stderr and a non-zero code."""
    try:
        return int(args.func(args))
    except SalipError as exc:
        if verbose:
            logger.exception("error")
        sys.stderr.write(f"salip: error: {one_line(exc, limit=1000)}\n")
        return 1
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("salip: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - last-resort one-line report
        if verbose:
            logger.exception("unexpected error")
        sys.stderr.write(
            f"salip: error: unexpected {type(exc).__name__}: {one_line(exc, limit=1000)}. This is a bug "
            "in salip: please report it with the output of the same command run with -v.\n"
        )
        return 1


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C while a command runs, so its cleanup runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
