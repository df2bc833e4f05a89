"""``salip organs``: list the organs salip knows, or their values in a public label set."""

from __future__ import annotations

import argparse
import logging
import sys

from salip.apps.cli.flags import Subparsers
from salip.core.label_sets import get_label_sets
from salip.core.organs import vocabulary

__all__ = [
    "add_parser",
    "run",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip organs``."""
    organs = sub.add_parser(
        "organs",
        parents=[common],
        help="List the organs salip knows, or their values in a public label set.",
    )
    organs.add_argument(
        "--labels",
        metavar="SET",
        help="Show organ -> label values in a label set: totalseg, totalseg_mr, btcv, amos, "
        "msd (all Decathlon tasks) or one msd_* task.",
    )
    organs.add_argument(
        "--prompts-dir",
        help="A user prompt set whose targets are listed too (default: $SALIP_PROMPTS_DIR).",
    )
    organs.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``salip organs``; the exit code."""
    out = sys.stdout
    if args.labels:
        for ls in get_label_sets(args.labels):
            out.write(f"{ls.name}: {ls.title}\n")
            for organ, values in ls.labels.items():
                note = (
                    f"  (approximate: {ls.approximate[organ]})" if organ in ls.approximate else ""
                )
                out.write(f"  {organ:30s} {'+'.join(map(str, values))}{note}\n")
        return 0
    known = vocabulary(args.prompts_dir)
    out.write(f"{'organ':30s} {'top-k':5s} {'window':11s} {'side':5s} modalities / regions\n")
    for organ in known.organs.values():
        extra = []
        source = known.sources[organ.name]
        if source != "built-in":
            overrides = " (overrides the built-in one)" if organ.name in known.overridden else ""
            extra.append(f"user target: {source}{overrides}")
        if organ.parts:
            extra.append(f"pair of {' + '.join(organ.parts)}")
        if organ.synonyms:
            extra.append(f"also: {', '.join(organ.synonyms)}")
        side = organ.laterality if organ.laterality != "none" else "-"
        out.write(
            f"{organ.name:30s} {organ.top_k:<5d} {organ.window:11s} {side:5s} "
            f"{','.join(organ.modalities)} / {','.join(organ.regions)}"
            + (f"  ({'; '.join(extra)})" if extra else "")
            + "\n"
        )
    return 0
