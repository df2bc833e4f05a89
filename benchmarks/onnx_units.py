"""SAM's unit costs on CPU with torch and with ONNX Runtime, side by side, in one run.

    python benchmarks/onnx_units.py --sam-model-type vit_b --slices 2 --json units.json

Runs ``salip bench-units``'s measurement (:func:`salip.apps.bench.unit_costs.
measure_unit_costs`: image encoder per slice, everything mode per slice, one box prompt)
once with ``runtime="torch"`` and once with ``runtime="onnx"``, on the same synthetic
slices and the same weights (a checkpoint, or a random-weight SAM built from the same
seed), then checks that the two runtimes agree on the same slices:

- the encoder's embeddings (largest absolute difference);
- everything mode's proposals, each runtime on its own embeddings (mean and minimum
  IoU of the masks, matched in order, and whether both kept the same number).

Box prompts run on torch in both (ONNX Runtime runs the encoder and the point decoder).
Prints a markdown table and, with ``--json``, writes both results and the agreement.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salip.apps.bench.unit_costs import measure_unit_costs, phantom_slices
from salip.core.config import ProposalConfig
from salip.engines.everything_mode import generate_proposals_batch
from salip.models.sam import load_sam
from salip.models.sam_onnx import open_onnx_sam
from salip.models.sam_runtime import encode_images, fast_encoder


def _model(checkpoint: str | None, model_type: str, seed: int) -> Any:
    """The SAM that ``measure_unit_costs`` builds for the same arguments (torch)."""
    if checkpoint:
        return load_sam(checkpoint).model
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    return sam_model_registry[model_type](checkpoint=None).eval()


def agreement(
    checkpoint: str | None, model_type: str, seed: int, slices: int, size: int, grid: int
) -> dict[str, Any]:
    """How far ONNX Runtime's embeddings and proposals are from torch's on the slices."""
    sam = _model(checkpoint, model_type, seed)
    images = phantom_slices(slices, size, seed)
    config = ProposalConfig(points_per_side=grid, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    with tempfile.TemporaryDirectory(prefix="salip-onnx-") as folder:
        onnx = open_onnx_sam(sam, Path(folder) / "graphs", torch.get_num_threads())
    ref = encode_images(sam, images, 1, encoder=fast_encoder(sam))
    ours = encode_images(sam, images, 1, encoder=onnx.encoder)
    diff = max(float((a.features - b.features).abs().max()) for a, b in zip(ref, ours))
    ious, same_count = [], True
    for a, b in zip(ref, ours):
        (pa,) = generate_proposals_batch(sam, [a], config)
        (pb,) = generate_proposals_batch(sam, [b], config, runtime=onnx)
        same_count &= len(pa) == len(pb)
        for x, y in zip(pa.masks, pb.masks):
            union = int((x | y).sum())
            ious.append(1.0 if union == 0 else int((x & y).sum()) / union)
    return {
        "embedding_max_abs_diff": diff,
        "proposal_iou_mean": float(np.mean(ious)) if ious else None,
        "proposal_iou_min": float(np.min(ious)) if ious else None,
        "proposals_compared": len(ious),
        "same_proposal_counts": bool(same_count),
        "filters": "pred_iou_thresh 0, stability_score_thresh 0 (every mask compared)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam-checkpoint", help="A SAM checkpoint (default: random weights).")
    parser.add_argument("--sam-model-type", default="vit_b", help="Without a checkpoint.")
    parser.add_argument("--slices", type=int, default=2, help="Slices timed (default: 2).")
    parser.add_argument("--image-size", type=int, default=512, help="Slice side (default: 512).")
    parser.add_argument("--points-per-side", type=int, default=32, help="Grid (default: 32).")
    parser.add_argument("--box-prompts", type=int, default=16, help="Boxes per slice.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of weights and slices.")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON.")
    args = parser.parse_args(argv)
    common = dict(
        sam_checkpoint=args.sam_checkpoint,
        model_type=None if args.sam_checkpoint else args.sam_model_type,
        device="cpu",
        slices=args.slices,
        image_size=args.image_size,
        points_per_side=args.points_per_side,
        box_prompts=args.box_prompts,
        precision="fp32",
        seed=args.seed,
    )
    results = {name: measure_unit_costs(runtime=name, **common) for name in ("torch", "onnx")}
    agree = agreement(
        args.sam_checkpoint, args.sam_model_type, args.seed, args.slices, args.image_size,
        args.points_per_side,
    )  # fmt: skip
    if args.json:
        out = {"runs": results, "agreement": agree}
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    t, o = results["torch"], results["onnx"]
    lines = [
        f"{t['model_type']} ({t['weights']}), {t['image_size']}² slices, "
        f"{t['points_per_side']}² grid, prompts per call: torch {t['points_per_batch']}, "
        f"onnx {o['points_per_batch']} (the auto settings); {t['hardware']}, torch {t['torch']}",
        "| unit | torch (s) | onnx (s) | torch/onnx |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("encoder_s_per_slice", "encoder, per slice"),
        ("everything_s_per_slice", "everything mode, per slice"),
        ("box_s_per_prompt", "box prompt (torch in both)"),
    ):
        lines.append(f"| {label} | {t[key]:.4g} | {o[key]:.4g} | {t[key] / o[key]:.2f}x |")
    lines.append(f"agreement: {json.dumps(agree)}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
