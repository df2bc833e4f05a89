"""Cases per hour of ``salip segment`` over a cohort: ``--engine local`` and Ray with 1 and
2 workers, on the same cases, back to back. Each Ray worker runs torch on
``--cpus-per-worker`` threads (Ray sets OMP_NUM_THREADS); the local run uses them all.

The cohort is made of links to the shared test data (``../shared/data``): COPIES links to
each of the 30-slice CT crop, the DICOM CT series and the two 2D CT slices. Each run is a
fresh ``salip segment`` process (so the times include starting Python, Ray and the
workers, and loading the models in each worker) writing into its own folder; the masks of
every run are then compared with those of the local run.

    python benchmarks/many.py --sam-checkpoint build/smoke-models/sam_tiny.pth \\
        --clip-model local-dir:build/smoke-models/clip_tiny --copies 4

Prints one Markdown table row per run (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS = (
    "totalseg/example_ct_sm.nii.gz",
    "totalseg/example_ct_dicom",
    "slices/images/amos_0004_75.png",
    "slices/images/amos_0006_90.png",
)


def _cohort(folder: Path, copies: int) -> list[Path]:
    """``copies`` links to each input, as files or folders named ``cN_<name>``."""
    links = []
    for n in range(copies):
        for rel in INPUTS:
            source = DATA / rel
            link = folder / f"c{n}_{source.name}"
            link.symlink_to(source, target_is_directory=source.is_dir())
            links.append(link)
    return links


def _run(cases: list[Path], out: Path, args: argparse.Namespace, engine: list[str]) -> float:
    command = [sys.executable, "-m", "salip.apps.cli", "segment", *map(str, cases)]
    command += ["--organ", args.organ, "-o", str(out), "--no-progress", "-q"]
    command += ["--sam-checkpoint", args.sam_checkpoint, "--clip-model", args.clip_model]
    command += ["--points-per-side", str(args.points_per_side), "--modality", "ct"]
    command += ["--device", args.device, *engine]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def _case_seconds(folder: Path) -> float:
    """The sum of run.csv's per-case seconds (segmenting only: no start-up or loading)."""
    import csv

    with open(folder / "run.csv", newline="") as handle:
        return sum(float(row["seconds"]) for row in csv.DictReader(handle))


def _masks(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "run.csv"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam-checkpoint", required=True)
    parser.add_argument("--clip-model", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--gpus-per-worker", default="0")
    args = parser.parse_args()
    runs = {
        "local": [],
        "ray, 1 worker x 1 CPU": ["--engine", "ray", "--workers", "1"],
        "ray, 1 worker x 2 CPUs": ["--engine", "ray", "--workers", "1", "--cpus-per-worker", "2"],
        "ray, 2 workers x 1 CPU": ["--engine", "ray", "--workers", "2"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        cases = _cohort(root / "in", args.copies)
        seconds, outputs, busy = {}, {}, {}
        for name, engine in runs.items():
            if engine:
                engine = [*engine, "--gpus-per-worker", args.gpus_per_worker]
            out = root / "".join(c for c in name if c.isalnum())
            seconds[name] = _run(cases, out, args, engine)
            outputs[name] = _masks(out)
            busy[name] = _case_seconds(out)
        same = {name: outputs[name] == outputs["local"] for name in runs}
    cpu = platform.processor() or platform.machine()
    print(f"{len(cases)} cases, {os.cpu_count()} CPUs ({cpu}), device {args.device}")
    print("| run | cases | wall (s) | cases/hour | sum of case seconds | masks equal to local |")
    print("|---|---|---|---|---|---|")
    for name in runs:
        rate = len(cases) / seconds[name] * 3600
        print(
            f"| {name} | {len(cases)} | {seconds[name]:.1f} | {rate:.0f} | {busy[name]:.1f} "
            f"| {same[name]} |"
        )


if __name__ == "__main__":
    main()
