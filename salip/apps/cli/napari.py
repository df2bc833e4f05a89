"""``salip napari``: open napari with salip's widget and the given scans."""

from __future__ import annotations

import argparse

from salip.apps.cli.flags import Subparsers
from salip.core.errors import ConfigError

__all__ = [
    "add_parser",
    "run",
]


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip napari``."""
    parser = sub.add_parser(
        "napari",
        parents=[common],
        help="Open napari with salip's widget docked and the given scans loaded.",
        description="Open napari with salip's dock widget and the given scans (NIfTI, DICOM "
        "folders or zips, 2D images) read by salip's reader. Needs salip[napari].",
    )
    parser.add_argument("input", nargs="*", help="Scans to open.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``salip napari``; the exit code once the window is closed."""
    try:
        import napari  # noqa: F401
    except ImportError:
        raise ConfigError(
            "salip napari needs napari and Qt: pip install 'salip[napari]'."
        ) from None
    from salip.apps.napari.launch import launch

    launch(args.input)
    return 0
