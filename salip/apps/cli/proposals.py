"""``salip proposals``: write SAM everything-mode proposals of one image or slice as JSON."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from salip.api.proposals import propose
from salip.apps.cli.flags import Subparsers, add_config_flags, config_options
from salip.io.output_set import OutputSet
from salip.io.writing import json_text

__all__ = [
    "add_parser",
    "run",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip proposals``."""
    prop = sub.add_parser(
        "proposals",
        parents=[common],
        help="Write SAM everything-mode proposals of one image or slice as JSON.",
        description="Writes the same records as segment-anything's scripts/amg.py "
        "--convert-to-rle: segmentation (COCO RLE), bbox (XYWH), area, predicted_iou, "
        "stability_score, point_coords, crop_box. CLIP flags are accepted and unused.",
    )
    prop.add_argument("input", help="NIfTI file, DICOM folder or .zip, or 2D image.")
    prop.add_argument(
        "--slice",
        type=int,
        dest="slice_index",
        help="Slice index in the input file along --axis (default: middle).",
    )
    prop.add_argument("-o", "--output", required=True, help="JSON file to write.")
    prop.add_argument("--overwrite", action="store_true", help="Replace an existing output.")
    add_config_flags(prop, ["input", "models", "slicing", "proposals"])
    prop.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``salip proposals``; the exit code."""
    output = Path(args.output)
    with OutputSet(Path(args.input), overwrite=args.overwrite) as outputs:
        outputs.add(output, "-o")
        outputs.check_writable()
        records, info = propose(args.input, slice_index=args.slice_index, **config_options(args))
        text = json_text(records)
        outputs.stage(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        outputs.commit()
    logger.info("wrote %d proposals of slice %s to %s", len(records), info["slice"], output)
    return 0
