"""One-shot GPU check: SAM unit costs and a 200-slice CT end to end, in one short run.

    python benchmarks/gpu_check.py --out gpu_check.json          # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --out dry.json      # CPU, tiny models (tests)

It measures, on one device, in one process:

1. the unit costs of a vit_b and a vit_h SAM in bf16 (``salip bench-units``: encoder per
   slice, everything mode per slice at 32x32 points, one box prompt), on 512x512 slices;
2. a synthetic 512x512x200 CT, the shared DICOM series (512x512x20) tiled ten times along
   its slices, segmented end to end (``salip.segment``, liver) with the ``slices`` and the
   ``volume`` strategy: wall time, stage seconds, work counts, peak GPU memory.

It writes one JSON (``--out``) and prints the rows for ``benchmarks/RESULTS.md``.

Weights are random: timing does not depend on them, and a GPU machine lent for minutes
may have no network to fetch checkpoints. SAM is built from its official architecture;
CLIP is open_clip's ViT-B-16 built without weights. Masks from random weights mean
nothing: the check times the machinery at real sizes. Everything is written to a
temporary folder that is removed at the end.

``--dry-run`` runs the same steps on the CPU with the tests' tiny models and small sizes
(a 64-pixel unit-cost slice, an 8-slice crop of the shared CT), so that nothing is first
tried on the GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

import salip
from salip.apps.bench.devtime import hardware, peak_mb, reset_peak, timed
from salip.apps.bench.unit_costs import markdown_line, measure_unit_costs
from salip.io import read_input
from salip.io.writing import write_json

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "totalseg"


@dataclass(frozen=True)
class Sizes:
    """What one check run measures.

    Attributes:
        device: where everything runs.
        precision: the SAM encoder's precision.
        archs: SAM architectures for the unit costs.
        unit_image: unit-cost slice side (pixels).
        unit_grid: unit-cost everything-mode grid side.
        volume: the image the synthetic CT is tiled from.
        tiles: copies of it along the slices.
        max_slices: slices of it kept before tiling.
        grid: everything-mode grid side of the end-to-end runs.
    """

    device: str
    precision: str
    archs: tuple[str, ...]
    unit_image: int
    unit_grid: int
    volume: Path
    tiles: int
    max_slices: int
    grid: int


FULL = Sizes("cuda", "bf16", ("vit_b", "vit_h"), 512, 32, DATA / "example_ct_dicom", 10, 20, 32)
DRY = Sizes("cpu", "fp32", ("tiny",), 64, 4, DATA / "example_ct_sm.nii.gz", 2, 4, 4)


def tiled_ct(sizes: Sizes, folder: Path) -> Path:
    """The source volume's first ``max_slices`` canonical slices tiled ``tiles`` times
    along Z, as a RAS NIfTI of its voxel sizes (int16 HU)."""
    volume = read_input(sizes.volume)
    data = np.asarray(volume.data)[:, :, : sizes.max_slices]
    tiled = np.concatenate([data] * sizes.tiles, axis=2).astype(np.int16)
    affine = np.diag([*map(float, volume.spacing[:3]), 1.0])
    path = folder / "tiled_ct.nii.gz"
    nib.save(nib.Nifti1Image(tiled, affine), path)
    return path


def random_models(sizes: Sizes, folder: Path) -> dict[str, str]:
    """A random-weight SAM checkpoint (vit_b, or the tests' tiny one for a dry run) and a
    random CLIP ``local-dir:`` folder (ViT-B-16, or tiny), written by the tests' model
    builders (``tests/tiny_models.py``)."""
    sys.path.insert(0, str(REPO))
    from tests.tiny_models import make_tiny_clip_dir, make_tiny_sam

    if sizes.archs == ("tiny",):
        sam = make_tiny_sam(folder / "sam_tiny.pth")
        clip = make_tiny_clip_dir(folder / "clip_tiny")
    else:
        import open_clip

        from salip.models.sam import OFFICIAL_ARCHS

        sam = make_tiny_sam(folder / "sam_vit_b_random.pth", arch=OFFICIAL_ARCHS["vit_b"])
        clip = make_tiny_clip_dir(
            folder / "clip_vit_b_16_random", model_cfg=open_clip.get_model_config("ViT-B-16")
        )
    return {"sam_checkpoint": str(sam), "clip_model": f"local-dir:{clip}"}


def unit_costs(sizes: Sizes, models: dict[str, str]) -> list[dict[str, Any]]:
    """``salip bench-units`` of each architecture (random weights)."""
    results = []
    for arch in sizes.archs:
        tiny = arch == "tiny"
        results.append(
            measure_unit_costs(
                sam_checkpoint=models["sam_checkpoint"] if tiny else None,
                model_type=None if tiny else arch,
                device=sizes.device,
                slices=3,
                image_size=sizes.unit_image,
                points_per_side=sizes.unit_grid,
                box_prompts=16,
                precision=sizes.precision,
            )
        )
    return results


def end_to_end(sizes: Sizes, path: Path, models: dict[str, str]) -> list[dict[str, Any]]:
    """``salip.segment`` of the synthetic CT with each strategy: seconds, work, memory."""
    rows = []
    for strategy in ("slices", "volume"):
        reset_peak(sizes.device)
        wall, result = timed(
            sizes.device,
            lambda s=strategy: salip.segment(
                path,
                organs="liver",
                write=False,
                strategy=s,
                device=sizes.device,
                precision=sizes.precision,
                points_per_side=sizes.grid,
                modality="ct",
                **models,
            ),
        )
        report = result.report
        rows.append(
            {
                "strategy": strategy,
                "slices": int(report["input"]["shape"][2]),
                "wall_s": round(wall, 2),
                "timings_s": report["timings_s"],
                "counts": report["strategy"].get("counts", {}),
                "peak_gpu_mb": peak_mb(sizes.device),
            }
        )
    return rows


def result_rows(check: dict[str, Any]) -> list[str]:
    """The Markdown rows for benchmarks/RESULTS.md: one per unit-cost architecture (the
    columns of ``salip bench-units``), then one per strategy of the end-to-end runs:
    date | hardware | strategy | slices | wall s | encoder s | everything mode s |
    refine s | encoded / everything-mode slices / point prompts | peak GPU MB."""
    lines = [markdown_line(units) for units in check["unit_costs"]]
    machine = check["hardware"]["hardware"]
    for row in check["end_to_end"]:
        t = row["timings_s"]
        counts = row["counts"]
        peak = row["peak_gpu_mb"]
        lines.append(
            f"| {check['date']} | {machine} | {row['strategy']} | {row['slices']} | "
            f"{row['wall_s']:.1f} | {t.get('sam_encoder', 0):.1f} | {t.get('proposals', 0):.1f} "
            f"| {t.get('refine', 0):.1f} | {counts.get('encoded_slices', '')} / "
            f"{counts.get('proposal_slices', '')} / {counts.get('point_prompts', '')} | "
            f"{'' if peak is None else round(peak)} |"
        )
    return lines


def run(sizes: Sizes, out: Path) -> dict[str, Any]:
    """Every step of the check; writes ``out`` and returns what it wrote."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="salip-gpu-check-") as name:
        folder = Path(name)
        models = random_models(sizes, folder)
        check: dict[str, Any] = {
            "date": dt.date.today().isoformat(),
            "dry_run": sizes is DRY,
            "device": sizes.device,
            "precision": sizes.precision,
            "hardware": hardware(sizes.device),
            "torch": torch.__version__,
            "salip": salip.__version__,
            "weights": "random (timing only)",
        }
        check["unit_costs"] = unit_costs(sizes, models)
        check["end_to_end"] = end_to_end(sizes, tiled_ct(sizes, folder), models)
    check["wall_s"] = round(time.perf_counter() - started, 1)
    check["results_md"] = result_rows(check)
    write_json(out, check)
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="The JSON to write.")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny models, small sizes (for the tests)."
    )
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else FULL
    if sizes.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("gpu_check: no CUDA device; use --dry-run to check the script on CPU.\n")
        return 2
    check = run(sizes, args.out)
    sys.stdout.write("\n".join(check["results_md"]) + "\n")
    sys.stdout.write(f"wrote {args.out} in {check['wall_s']} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
