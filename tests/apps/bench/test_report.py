"""Benchmark summaries and figures against a small hand-made cases table."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from salip.apps.bench.figures import write_figures
from salip.apps.bench.report import (
    ORACLE_NOTE,
    SUMMARY_COLUMNS,
    summarize,
    summary_markdown,
)
from salip.apps.bench.runner import CASE_COLUMNS
from salip.core.errors import BenchmarkError

NAN = math.nan


def _row(
    case: str,
    organ: str,
    method: str,
    dice: float,
    dice_status: str,
    *,
    slice_dice: float = NAN,
    nsd: float = NAN,
    hd95: float = NAN,
    wall_s: float = 1.0,
    peak: float = NAN,
    error: str = "",
    montage: str = "",
    dataset: str = "toy",
) -> dict[str, object]:
    oracle = method == "gt-box"
    return {
        "dataset": dataset,
        "case": case,
        "organ": organ,
        "method": method,
        "method_kind": "sam-gt-box" if oracle else "cascade",
        "uses_ground_truth": oracle,
        "status": "error" if error else "ok",
        "error": error,
        "dice": dice,
        "dice_status": dice_status,
        "slice_dice": slice_dice,
        "gt_slices": 3,
        "nsd": nsd,
        "hd95": hd95,
        "pred_voxels": 10,
        "gt_voxels": 10,
        "spacing": "1,1,1",
        "approximate": "",
        "wall_s": wall_s,
        "peak_gpu_mb": peak,
        "device": "cpu",
        "montage": montage,
    }


def _cases(montage: str = "") -> pd.DataFrame:
    """Two methods (gt-box reads the reference), two organs, three cases.

    salip/liver: 0.5, 1.0, both-empty.     salip/spleen: false positive (0.0), error, 0.6.
    gt-box/liver: 0.9, 0.7, both-empty.    gt-box/spleen: both-empty, error, error.
    """
    salip_npz = montage
    rows = [
        _row("c1", "liver", "salip", 0.5, "scored", slice_dice=0.4, nsd=0.6, hd95=10.0,
             montage=salip_npz),
        _row("c1", "liver", "gt-box", 0.9, "scored", slice_dice=0.85, peak=100.0,
             montage="cases/toy/c1/gt-box.npz"),
        _row("c1", "spleen", "salip", 0.0, "false_positive", montage=salip_npz),
        _row("c1", "spleen", "gt-box", NAN, "both_empty"),
        _row("c2", "liver", "salip", 1.0, "scored", slice_dice=0.8, nsd=1.0, hd95=0.0,
             wall_s=3.0),
        _row("c2", "liver", "gt-box", 0.7, "scored", slice_dice=0.75, peak=300.0),
        _row("c2", "spleen", "salip", NAN, "", error="RuntimeError: boom", wall_s=99.0),
        _row("c2", "spleen", "gt-box", NAN, "", error="ValueError: bad"),
        _row("c3", "liver", "salip", NAN, "both_empty"),
        _row("c3", "liver", "gt-box", NAN, "both_empty"),
        _row("c3", "spleen", "salip", 0.6, "scored", slice_dice=0.5),
        _row("c3", "spleen", "gt-box", NAN, "", error="ValueError: bad"),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(CASE_COLUMNS))


def _get(summary: pd.DataFrame, organ: str, method: str) -> pd.Series:
    rows = summary[(summary["organ"] == organ) & (summary["method"] == method)]
    assert len(rows) == 1
    return rows.iloc[0]


def _section(markdown: str, heading: str) -> list[str]:
    """The table rows ("| ..." lines) of the section whose heading starts with ``heading``."""
    sections = markdown.split("\n## ")
    (section,) = [s for s in sections if s.startswith(heading)]
    return [line for line in section.splitlines() if line.startswith("|")]


def test_summarize_counts_means_and_order() -> None:
    summary = summarize(_cases(), n_resamples=500)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert list(zip(summary["organ"], summary["method"])) == [
        ("liver", "salip"),
        ("liver", "gt-box"),
        ("spleen", "salip"),
        ("spleen", "gt-box"),
    ]

    liver = _get(summary, "liver", "salip")
    assert liver["method_kind"] == "cascade"
    assert not liver["uses_ground_truth"]
    assert (liver["cases"], liver["scored"], liver["both_empty"]) == (3, 2, 1)
    assert (liver["false_positive"], liver["errors"]) == (0, 0)
    # both-empty c3 is left out: mean of 0.5 and 1.0, sample std.
    assert liver["dice_mean"] == pytest.approx(0.75)
    assert liver["dice_std"] == pytest.approx(math.sqrt(0.125))  # 0.353553...
    assert 0.5 <= liver["dice_ci_low"] <= 0.75 <= liver["dice_ci_high"] <= 1.0
    assert liver["dice_ci_low"] < liver["dice_ci_high"]
    assert liver["slice_dice_mean"] == pytest.approx(0.6)
    assert liver["slice_dice_std"] == pytest.approx(math.sqrt(0.08))
    assert liver["slice_dice_ci_low"] <= 0.6 <= liver["slice_dice_ci_high"]
    assert liver["nsd_mean"] == pytest.approx(0.8)
    assert liver["hd95_mean"] == pytest.approx(5.0)
    assert liver["wall_s_mean"] == pytest.approx(5.0 / 3.0)  # every ok row: 1, 3 and 1 s
    assert math.isnan(liver["peak_gpu_mb_max"])

    spleen = _get(summary, "spleen", "salip")
    assert (spleen["scored"], spleen["false_positive"], spleen["errors"]) == (1, 1, 1)
    # the false positive counts with Dice 0.0; the error row has none.
    assert spleen["dice_mean"] == pytest.approx(0.3)
    assert spleen["dice_std"] == pytest.approx(math.sqrt(0.18))
    assert spleen["dice_ci_low"] <= 0.3 <= spleen["dice_ci_high"]
    assert spleen["slice_dice_mean"] == pytest.approx(0.5)
    assert spleen["slice_dice_std"] == 0.0
    assert spleen["slice_dice_ci_low"] == spleen["slice_dice_ci_high"] == pytest.approx(0.5)
    assert spleen["wall_s_mean"] == pytest.approx(1.0)  # the error row's 99 s is left out
    assert math.isnan(spleen["nsd_mean"]) and math.isnan(spleen["hd95_mean"])

    oracle_liver = _get(summary, "liver", "gt-box")
    assert oracle_liver["uses_ground_truth"]
    assert oracle_liver["method_kind"] == "sam-gt-box"
    assert oracle_liver["dice_mean"] == pytest.approx(0.8)
    assert oracle_liver["peak_gpu_mb_max"] == pytest.approx(300.0)

    oracle_spleen = _get(summary, "spleen", "gt-box")
    assert (oracle_spleen["scored"], oracle_spleen["both_empty"]) == (0, 1)
    assert oracle_spleen["errors"] == 2
    for column in ("dice_mean", "dice_std", "dice_ci_low", "dice_ci_high", "slice_dice_mean"):
        assert math.isnan(oracle_spleen[column])


def test_summarize_is_deterministic_and_reads_csv_back(tmp_path: Path) -> None:
    cases = _cases()
    path = tmp_path / "cases.csv"
    cases.to_csv(path, index=False)
    from_csv = summarize(pd.read_csv(path), seed=3)
    direct = summarize(cases, seed=3)
    pd.testing.assert_frame_equal(from_csv, direct, check_dtype=False)
    other_seed = summarize(cases, seed=4)
    assert other_seed["dice_mean"].equals(direct["dice_mean"])


def test_summarize_empty_and_invalid_input() -> None:
    empty = summarize(pd.DataFrame(columns=list(CASE_COLUMNS)))
    assert empty.empty
    assert list(empty.columns) == list(SUMMARY_COLUMNS)
    with pytest.raises(BenchmarkError, match="dice_status"):
        summarize(_cases().drop(columns=["dice_status"]))
    with pytest.raises(BenchmarkError, match="confidence"):
        summarize(_cases(), confidence=1.5)


def test_summary_markdown_tables() -> None:
    summary = summarize(_cases(), n_resamples=200)
    run_info = {"config": "bench.toml", "device": "cuda", "sam": "vit_b"}
    markdown = summary_markdown(summary, run_info)
    assert markdown.startswith("# ")
    assert "config `bench.toml`" in markdown
    assert "device cuda" in markdown and "SAM vit_b" in markdown
    assert "CLIP" not in markdown and "date" not in markdown

    dice = _section(markdown, "Dice")
    assert dice == [
        "| Method | liver | spleen |",
        "|---|---|---|",
        "| salip | 0.750 ± 0.354 | 0.300 ± 0.424 |",
        "| gt-box † | 0.800 ± 0.141 | – |",
    ]
    per_slice = _section(markdown, "Per-slice Dice")
    assert per_slice[2:] == [
        "| salip | 0.600 ± 0.283 | 0.500 ± 0.000 |",
        "| gt-box † | 0.800 ± 0.071 | – |",
    ]
    assert ORACLE_NOTE in markdown
    assert "95% bootstrap" in markdown and "summary.csv" in markdown

    counts = _section(markdown, "Cases")
    assert counts[2:] == ["| salip | 6 | 3 | 1 | 1 | 1 |", "| gt-box † | 6 | 2 | 2 | 0 | 2 |"]
    assert "3 error rows; see cases.csv `error` column" in markdown


def test_summary_markdown_two_datasets_and_no_oracle() -> None:
    cases = _cases()
    cases = cases[cases["method"] == "salip"]
    other = cases.assign(dataset="other")
    other = other[other["organ"] == "liver"]
    summary = summarize(pd.concat([cases, other]), n_resamples=50)
    markdown = summary_markdown(summary, {})
    dice = _section(markdown, "Dice")
    assert dice[0] == "| Method | liver (toy) | spleen (toy) | liver (other) |"
    assert len(dice) == 3  # header, rule, one method
    assert "†" not in markdown and ORACLE_NOTE not in markdown
    assert "1 error row;" in markdown
    assert "Run:" not in markdown


def test_summary_markdown_reads_csv_back(tmp_path: Path) -> None:
    summary = summarize(_cases(), n_resamples=100)
    path = tmp_path / "summary.csv"
    summary.to_csv(path, index=False)
    assert summary_markdown(pd.read_csv(path), {"date": "2024-01-01"}) == summary_markdown(
        summary, {"date": "2024-01-01"}
    )


def _write_montage(path: Path) -> None:
    """A 32x32 montage slice for the liver: reference square, shifted predicted square."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1))
    gt = np.zeros((32, 32), dtype=bool)
    gt[6:20, 6:20] = True
    pred = np.zeros((32, 32), dtype=bool)
    pred[12:28, 12:28] = True
    np.savez_compressed(
        path, liver__image=image, liver__gt=gt, liver__pred=pred, liver__index=np.int64(17)
    )


def _png(path: Path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        image.load()
        return np.asarray(image.convert("RGB"))


def test_write_figures_with_montage(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write_montage(tmp_path / "cases" / "toy" / "c1" / "salip.npz")
    cases = _cases(montage="cases/toy/c1/salip.npz")
    with caplog.at_level(logging.WARNING, logger="salip.apps.bench.figures"):
        paths = write_figures(cases, tmp_path, worst=3)
    assert paths == [
        tmp_path / "figures" / "dice_boxplot.png",
        tmp_path / "figures" / "worst_cases.png",
    ]
    boxplot = _png(paths[0])
    assert boxplot.shape[0] >= 300 and boxplot.shape[1] >= 500
    assert len(np.unique(boxplot.reshape(-1, 3), axis=0)) > 20  # more than a text figure

    montage = _png(paths[1])
    # One salip panel loads (liver c1; the npz has no keys for the spleen false positive), so
    # the montage is a panel figure, not the 600x200 message figure.
    assert montage.shape[:2] != (200, 600)
    red = (montage[..., 0] > 200) & (montage[..., 1] < 90) & (montage[..., 2] < 90)
    cyan = (montage[..., 0] < 90) & (montage[..., 1] > 170) & (montage[..., 2] > 200)
    assert red.sum() > 20 and cyan.sum() > 20

    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "gt-box.npz is missing" in messages
    assert "spleen__image" in messages


def test_write_figures_missing_montage_and_no_scores(tmp_path: Path) -> None:
    cases = _cases(montage="cases/toy/c1/absent.npz")
    paths = write_figures(cases, tmp_path)
    assert [p.name for p in paths] == ["dice_boxplot.png", "worst_cases.png"]
    assert _png(paths[0]).shape[:2] != (200, 600)
    assert _png(paths[1]).shape[:2] == (200, 600)  # "no scored cases with montage slices"

    unscored = cases.assign(dice=NAN, dice_status="both_empty")
    out = tmp_path / "empty"
    paths = write_figures(unscored, out)
    for path in paths:
        assert path.parent == out / "figures"
        assert _png(path).shape[:2] == (200, 600)

    with pytest.raises(BenchmarkError, match="worst"):
        write_figures(cases, tmp_path, worst=0)


def test_empty_cell_footnote_only_when_a_cell_is_empty() -> None:
    """The "–" footnote explains a cell that shows "–", and is absent when none does."""
    with_empty = summary_markdown(summarize(_cases(), n_resamples=50), {})
    assert "– no case with a Dice value" in with_empty
    salip_only = _cases()[_cases()["method"] == "salip"]
    markdown = summary_markdown(summarize(salip_only, n_resamples=50), {})
    assert "–" not in "\n".join(_section(markdown, "Dice") + _section(markdown, "Per-slice"))
    assert "no case with a Dice value" not in markdown
    assert "both empty are left out of the means" in markdown
