"""``salip bench-units``: measure SAM's unit costs: encoder per slice, everything mode per slice, box prompt."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from salip.apps.bench.unit_costs import markdown_line, measure_unit_costs
from salip.apps.cli.flags import Subparsers
from salip.io.writing import write_json
from salip.models.sam_onnx import RUNTIMES

__all__ = [
    "add_parser",
    "run",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip bench-units``."""
    units = sub.add_parser(
        "bench-units",
        parents=[common],
        help="Measure SAM's unit costs: encoder per slice, everything mode per slice, box prompt.",
        description="On synthetic CT slices, times SAM's image encoder per slice, everything "
        "mode per slice (the point grid with salip's IoU/stability/NMS filtering) and one "
        "box prompt, as salip runs them (medians over slices, seconds). Without "
        "--sam-checkpoint the model is a RANDOM-weight SAM of --sam-model-type (timing does "
        "not depend on weights). Prints the figures and a Markdown line for "
        "benchmarks/RESULTS.md.",
    )
    units.add_argument(
        "--sam-checkpoint",
        metavar="PATH",
        help="SAM checkpoint file or official name (default: random weights).",
    )
    units.add_argument(
        "--sam-model-type",
        metavar="TYPE",
        help="vit_b, vit_l or vit_h (default: vit_b without a checkpoint; with one, read "
        "from the file).",
    )
    units.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)."
    )
    units.add_argument(
        "--precision",
        default="auto",
        help="Encoder precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.",
    )
    units.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="What runs the encoder and the everything-mode decoder, as `salip segment "
        "--runtime`: torch, onnx (ONNX Runtime, CPU fp32), or auto (onnx on CPU at fp32, "
        "else torch). Box prompts run on torch. Default: auto.",
    )
    units.add_argument("--slices", type=int, default=3, help="Slices timed (default: 3).")
    units.add_argument(
        "--image-size", type=int, default=512, help="Slice side in pixels (default: 512)."
    )
    units.add_argument(
        "--points-per-side", type=int, default=32, help="Everything-mode grid side (default: 32)."
    )
    units.add_argument(
        "--box-prompts", type=int, default=16, help="Boxes decoded per slice (default: 16)."
    )
    units.add_argument(
        "--pred-iou-thresh",
        type=float,
        help="Everything-mode predicted-IoU filter (default: salip's, 0.88).",
    )
    units.add_argument(
        "--stability-score-thresh",
        type=float,
        help="Everything-mode stability filter (default: salip's, 0.95).",
    )
    units.add_argument("--seed", type=int, default=0, help="Seed of weights, slices and boxes.")
    units.add_argument("--json", metavar="PATH", help="Also write the results as JSON.")
    units.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``salip bench-units``; the exit code."""
    model_type = args.sam_model_type or (None if args.sam_checkpoint else "vit_b")
    result = measure_unit_costs(
        sam_checkpoint=args.sam_checkpoint,
        model_type=model_type,
        device=args.device,
        slices=args.slices,
        image_size=args.image_size,
        points_per_side=args.points_per_side,
        box_prompts=args.box_prompts,
        precision=args.precision,
        seed=args.seed,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        runtime=args.runtime,
    )
    if args.json:
        write_json(Path(args.json), result)
    keys = (
        "encoder_s_per_slice",
        "everything_s_per_slice",
        "box_s_per_prompt",
        "everything_over_encoder",
        "box_s_per_prompt_batched",
        "encoder_s_per_slice_auto_batch",
        "everything_proposals",
        "device",
        "hardware",
        "model_type",
        "weights",
        "precision",
        "runtime",
        "points_per_batch",
    )
    for key in keys:
        logger.info("%s: %s", key, result[key])
    sys.stdout.write(markdown_line(result) + "\n")
    return 0
