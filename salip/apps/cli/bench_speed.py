"""``salip bench-speed``: time salip against the SaLIP reference cost structure on one volume."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from salip.apps.bench.speed import markdown_line, run_speed
from salip.apps.cli.flags import Subparsers, add_config_flags, config_options

__all__ = [
    "add_parser",
    "run",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip bench-speed``."""
    speed = sub.add_parser(
        "bench-speed",
        parents=[common],
        help="Time salip against the SaLIP reference cost structure on one volume.",
        description="In one process, on the same device, checkpoints and slices: (A) the "
        "reference structure (SamAutomaticMaskGenerator per slice, CLIP with texts encoded "
        "again, SamPredictor.set_image plus box prompts) and (B) salip. Prints the ratio A/B, "
        "the mask agreement (mean IoU), per-stage seconds, and a Markdown line for "
        "benchmarks/RESULTS.md.",
    )
    source = speed.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="NIFTI", help="A NIfTI volume to segment.")
    source.add_argument(
        "--shape", metavar="XxYxZ", help="A synthetic CT phantom of this shape, e.g. 512x512x200."
    )
    speed.add_argument("--organ", default="liver", help="Organ to segment (default: liver).")
    speed.add_argument(
        "--extra-organ",
        action="append",
        default=[],
        metavar="ORGAN",
        help="Also time salip on --organ plus these organs in one run (repeat or "
        "comma-separate), to report the cost of several organs against one.",
    )
    speed.add_argument("--json", metavar="PATH", help="Also write the results as JSON.")
    add_config_flags(speed, ["models", "strategy", "slicing", "proposals"])
    speed.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``salip bench-speed``; the exit code."""
    result = run_speed(
        input=args.input,
        shape=args.shape,
        organ=args.organ,
        extra_organs=[o.strip() for item in args.extra_organ for o in item.split(",") if o.strip()],
        json_path=args.json,
        **config_options(args),
    )
    keys = ("reference_s", "salip_s", "ratio", "agreement_iou", "device", "precision", "shape")
    if result["multi_organ_s"] is not None:
        keys += ("multi_organs", "multi_organ_s", "multi_organ_ratio")
    for key in keys:
        logger.info("%s: %s", key, result[key])
    logger.info("salip stages (s): %s", json.dumps(result["stages"]))
    logger.info("reference stages (s): %s", json.dumps(result["reference_stages"]))
    sys.stdout.write(markdown_line(result) + "\n")
    return 0
