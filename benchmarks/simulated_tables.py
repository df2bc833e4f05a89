"""Tables of a simulated strategy benchmark run: mean Dice per case, noise and strategy
(over seeds and the organs the reference holds), per organ, the work done, and how well
the confidence tells right answers from wrong ones.

    python benchmarks/simulated_tables.py OUT [--min-confidence 0.5] [--markdown]

``OUT`` is a `salip benchmark` output folder of a config whose rows are named
``STRATEGY-NOISE-sSEED`` (``simulated.toml``, ``simulated-dev.toml``) and run with
``min_confidence = 0``, so every answer and its confidence is in ``cases.csv``. Withholding
below a threshold only empties a mask, so the results "with --min-confidence T" are
derived exactly from those rows: an answer with confidence < T scores as an empty mask.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

NAME = re.compile(r"^(?P<strategy>[a-z]+)-(?P<noise>[a-z+]+)-s(?P<seed>\d+)$")


def load(out: Path) -> pd.DataFrame:
    """The ok rows of ``cases.csv`` with strategy, noise and seed from the row names."""
    cases = pd.read_csv(out / "cases.csv")
    cases = cases[cases.status == "ok"].copy()
    parts = cases.method.str.extract(NAME)
    if parts.isna().any().any():
        bad = sorted(set(cases.method[parts.isna().any(axis=1)]))
        raise SystemExit(f"rows not named STRATEGY-NOISE-sSEED: {', '.join(bad)}")
    cases[["strategy", "noise", "seed"]] = parts
    cases["present"] = cases.gt_voxels > 0
    if "confidence" not in cases:  # a run from before salip gave a confidence
        cases["confidence"] = np.nan
    return cases


def withheld(cases: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The rows as answered with ``--min-confidence threshold``: below it, an empty mask."""
    out = cases.copy()
    low = out.confidence.fillna(1.0) < threshold
    out.loc[low & out.present, "dice"] = 0.0
    out.loc[low, "pred_voxels"] = 0
    return out


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positives`` (ties count half): the
    Mann-Whitney statistic, written out to keep this script free of scikit-learn."""
    pos, neg = scores[positives], scores[~positives]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def tables(cases: pd.DataFrame, threshold: float) -> str:
    """The markdown tables."""
    lines = []
    answered = withheld(cases, threshold)
    present = answered[answered.present]
    order = [
        n for n in ("none", "low", "moderate", "moderate+bias", "high") if n in set(cases.noise)
    ]
    lines += [
        f"### Mean Dice (organs present, seeds pooled; --min-confidence {threshold:g})",
        "",
        "| case | noise | " + " | ".join(sorted(set(cases.strategy))) + " |",
        "|---|---|" + "---|" * len(set(cases.strategy)),
    ]
    for dataset in sorted(set(cases.dataset)):
        for noise in order:
            rows = present[(present.dataset == dataset) & (present.noise == noise)]
            means = [rows[rows.strategy == s].dice.mean() for s in sorted(set(cases.strategy))]
            lines.append(f"| {dataset} | {noise} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    lines += ["", "### Mean Dice per organ (seeds pooled)", ""]
    for dataset in sorted(set(cases.dataset)):
        rows = present[present.dataset == dataset]
        organs = sorted(set(rows.organ))
        lines += [f"{dataset}:", "", "| strategy | noise | " + " | ".join(organs) + " |"]
        lines.append("|---|---|" + "---|" * len(organs))
        for strategy in sorted(set(rows.strategy)):
            for noise in order:
                sub = rows[(rows.strategy == strategy) & (rows.noise == noise)]
                means = [sub[sub.organ == o].dice.mean() for o in organs]
                cells = " | ".join(f"{m:.2f}" for m in means)
                lines.append(f"| {strategy} | {noise} | {cells} |")
        lines.append("")
    if cases.confidence.notna().any():
        lines += confidence_lines(cases, threshold)
    lines += work_lines(cases)
    return "\n".join(lines)


def confidence_lines(cases: pd.DataFrame, threshold: float) -> list[str]:
    """AUROC of confidence for Dice < 0.5, absent organs found, good answers withheld."""
    lines = [
        "### Confidence",
        "",
        "| strategy | AUROC, Dice < 0.5 | absent organs not found | Dice >= 0.7 withheld |",
        "|---|---|---|---|",
    ]
    for strategy in sorted(set(cases.strategy)):
        rows = cases[cases.strategy == strategy]
        present = rows[rows.present]
        area = auroc(-present.confidence.to_numpy(), (present.dice < 0.5).to_numpy())
        absent = rows[~rows.present]
        not_found = (absent.confidence < threshold) | (absent.pred_voxels == 0)
        good = present[present.dice >= 0.7]
        lost = (good.confidence < threshold).mean() if len(good) else float("nan")
        lines.append(
            f"| {strategy} | {area:.3f} (n={len(present)}) | "
            f"{not_found.mean():.1%} ({int(not_found.sum())}/{len(absent)}) | "
            f"{lost:.1%} ({int((good.confidence < threshold).sum())}/{len(good)}) |"
        )
    return lines + [""]


def work_lines(cases: pd.DataFrame) -> list[str]:
    """Mean work per case (encoded / everything-mode slices / box prompts)."""
    lines = [
        "### Work per case (mean over rows: encoded / everything-mode / box prompts)",
        "",
        "| case | strategy | encoded | everything-mode | box prompts |",
        "|---|---|---|---|---|",
    ]
    first = cases.groupby(["dataset", "method"]).first().reset_index()
    for (dataset, strategy), rows in first.groupby(["dataset", "strategy"]):
        lines.append(
            f"| {dataset} | {strategy} | {rows.encoded_slices.mean():.0f} | "
            f"{rows.proposal_slices.mean():.0f} | {rows.box_prompts.mean():.0f} |"
        )
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the benchmark's output folder")
    parser.add_argument("--min-confidence", type=float, default=0.5)
    args = parser.parse_args(argv)
    print(tables(load(args.out), args.min_confidence))
    return 0


if __name__ == "__main__":
    sys.exit(main())
