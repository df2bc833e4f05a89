"""``salip models``: download or list SAM checkpoints."""

from __future__ import annotations

import argparse
import logging
import sys

from salip.apps.cli.flags import Subparsers
from salip.models.download import download_checkpoint, list_cached
from salip.models.registry import OFFICIAL_BASE_URL, checkpoint_dir

__all__ = [
    "add_parser",
    "run_download",
    "run_list",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip models download`` and ``salip models list``."""
    models = sub.add_parser("models", help="Download or list SAM checkpoints.")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    dl = msub.add_parser(
        "download",
        parents=[common],
        help="Download official SAM checkpoints into the cache ($SALIP_HOME).",
    )
    dl.add_argument(
        "names", nargs="*", default=["vit_b"], help="vit_b, vit_l and/or vit_h (default: vit_b)."
    )
    dl.add_argument(
        "--mirror", metavar="URL", help="Base URL to fetch from instead of Meta's server."
    )
    dl.add_argument("--force", action="store_true", help="Download again even if cached.")
    dl.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    dl.set_defaults(func=run_download)
    ls = msub.add_parser(
        "list", parents=[common], help="Show which official checkpoints are cached."
    )
    ls.set_defaults(func=run_list)


def run_download(args: argparse.Namespace) -> int:
    """Run ``salip models download``; the exit code."""
    for name in args.names:
        path = download_checkpoint(
            name,
            base_url=args.mirror or OFFICIAL_BASE_URL,
            force=args.force,
            progress=not args.no_progress and not args.quiet,
        )
        logger.info("%s: %s", name, path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Run ``salip models list``; the exit code."""
    rows = list_cached()
    sys.stdout.write(f"cache: {checkpoint_dir()}\n")
    for row in rows:
        state = f"cached, {row['bytes']:,} bytes" if row["cached"] else "not cached"
        sys.stdout.write(f"{row['name']:6s} {state}  {row['file']}\n")
    return 0
