"""Fit the confidence model (``salip.strategies.evidence.CONFIDENCE_WEIGHTS``) on the
development case of the simulated benchmark, and print the weights to freeze.

    python benchmarks/calibrate_confidence.py [--seeds 5] [--json features.json]

The development case is ``example_ct_sm.nii.gz`` with ``example_seg.nii.gz`` (30 CT slices
of 3 mm), never the evaluation cases of ``configs/simulated.toml``. Every strategy runs on
simulated engines at every noise preset (and the moderate preset with the correlated-bias
field at the moderate confusion rate), seeds 0..N-1, asking for the nine scored organs and
three that the crop does not hold, with ``min_confidence = 0`` so that every answer is
kept. An answer is right when its Dice is at least 0.5 (an absent organ: when nothing is
answered). A logistic regression of "right" on the regressors of
:func:`salip.strategies.evidence.confidence_inputs` (Newton's method, a small ridge
penalty; no scikit-learn in salip's dependencies) gives the weights; the confidence is
then the estimated probability that the answer is right. Answers with no mask (nothing
recognised) have no features and are left out: they are "not found" whatever the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg"
ORGANS = [
    "liver", "spleen", "kidney_left", "kidney_right", "aorta",
    "pancreas", "stomach", "gallbladder", "inferior_vena_cava",
    "brain", "prostate", "urinary_bladder",
]  # fmt: skip
ROWS = [("none", 0.0), ("low", 0.0), ("moderate", 0.0), ("moderate", 0.1), ("high", 0.0)]


def collect(seeds: int) -> list[dict]:
    """One record per (strategy, noise, seed, organ): features, Dice, presence."""
    from salip.api.factory import CaseInput, build
    from salip.api.pipeline import segment
    from salip.core.config import SegmentConfig
    from salip.core.organs import get_organ
    from salip.io import read_input, to_canonical

    volume = read_input(DATA / "example_ct_sm.nii.gz")
    labels = np.asarray(nib.load(DATA / "example_seg.nii.gz").dataobj).astype(np.int64)
    names = {int(k): v for k, v in json.loads((DATA / "labels_total.json").read_text()).items()}
    canonical = to_canonical(labels, volume.geometry)
    organs = [get_organ(o) for o in ORGANS]
    out = []
    for strategy in ("slices", "volume"):
        config = SegmentConfig().replace(strategy=strategy, modality="ct", min_confidence=0.0)
        for noise, bias in ROWS:
            for seed in range(seeds):
                case = CaseInput(
                    tuple(organs), "ct", False, None, (canonical, names), volume.spacing
                )
                extra = {"noise": noise, "seed": seed, "bias_rate": bias}
                built = build("simulated", None, config, case, extra=extra)
                result = segment(
                    volume, organs=ORGANS, write=False, config=config, segmenter=built.strategy
                )
                for organ in organs:
                    ref = np.isin(labels, [v for v, n in names.items() if n in _classes(organ)])
                    pred = result.masks[organ.name].astype(bool)
                    entry = result.report["organs"][organ.name]
                    denom = pred.sum() + ref.sum()
                    dice = 2 * (pred & ref).sum() / denom if denom else float("nan")
                    out.append({
                        "strategy": strategy, "noise": noise + ("+bias" if bias else ""),
                        "seed": seed, "organ": organ.name, "present": bool(ref.any()),
                        "found": bool(pred.any()), "dice": float(dice),
                        "account": entry.get("decision") or {},
                    })  # fmt: skip
    return out


def _classes(organ) -> set[str]:
    return {organ.name, *organ.parts}


def right(record: dict) -> bool:
    """Dice >= 0.5 for an organ the reference holds; nothing answered for one it does not."""
    return record["dice"] >= 0.5 if record["present"] else not record["found"]


def fit(records: list[dict], ridge: float = 1e-2) -> np.ndarray:
    """Logistic regression weights of ``right`` on the features (Newton-Raphson)."""
    from salip.strategies.evidence import confidence_inputs

    usable = [r for r in records if r["account"].get("score") is not None]
    x = np.array([confidence_inputs(r["account"]) for r in usable])
    y = np.array([right(r) for r in usable], dtype=float)
    w = np.zeros(x.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (p - y) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("--records", type=Path, help="fit the records of an earlier --json")
    args = parser.parse_args(argv)
    records = json.loads(args.records.read_text()) if args.records else collect(args.seeds)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    w = fit(records)
    print("CONFIDENCE_WEIGHTS = (" + ", ".join(f"{v:.3f}" for v in w) + ")")
    print(f"records: {len(records)}, right: {sum(right(r) for r in records)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
