"""Benchmark summaries: ``summary.csv`` and ``summary.md``, from ``cases.csv`` rows.

Input is the per-row result table of ``salip benchmark`` (a pandas DataFrame with the
``cases.csv`` columns: one row per (dataset, case, organ, method)). Outputs:

:func:`summarize`
    One row per (dataset, organ, method) with case counts (scored, both-empty, false-positive,
    error rows), the mean, sample standard deviation and percentile-bootstrap confidence
    interval of the volume Dice and of the per-slice Dice, mean NSD and HD95, mean wall time
    and peak GPU memory, and the mean work counts of the strategy (encoded slices, proposal
    slices, box prompts) where cases.csv has them (:data:`SUMMARY_COLUMNS`). This is
    ``summary.csv``.
:func:`summary_markdown`
    ``summary.md``: paper-shaped tables of Dice and per-slice Dice "mean ± std" with methods
    as rows and (dataset, organ) as columns, methods that read the reference marked "†", and
    the counts of scored, both-empty, false-positive and error rows per method.

The figures are drawn from the same rows by :mod:`salip.apps.bench.figures`.

Dice rules (see :func:`salip.apps.bench.metrics.dice_case`): "both_empty" rows have no Dice and are
left out of means but counted; "false_positive" rows have Dice 0.0 and count in means.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from salip.apps.bench.metrics import (
    STATUS_BOTH_EMPTY,
    STATUS_FALSE_POSITIVE,
    STATUS_SCORED,
    bootstrap_ci,
    mean_std,
)
from salip.core.errors import BenchmarkError

__all__ = [
    "EMPTY_CELL",
    "ORACLE_MARK",
    "ORACLE_NOTE",
    "SUMMARY_COLUMNS",
    "TRAINED_KINDS",
    "TRAINED_MARK",
    "TRAINED_NOTE",
    "prepare_cases",
    "summarize",
    "summary_markdown",
    "unique",
]

logger = logging.getLogger(__name__)

#: Columns of :func:`summarize`'s output (``summary.csv``), in order.
SUMMARY_COLUMNS = (
    "dataset",
    "organ",
    "method",
    "method_kind",
    "uses_ground_truth",
    "cases",
    "scored",
    "both_empty",
    "false_positive",
    "errors",
    "dice_mean",
    "dice_std",
    "dice_ci_low",
    "dice_ci_high",
    "slice_dice_mean",
    "slice_dice_std",
    "slice_dice_ci_low",
    "slice_dice_ci_high",
    "nsd_mean",
    "hd95_mean",
    "wall_s_mean",
    "peak_gpu_mb_max",
    "encoded_slices_mean",
    "proposal_slices_mean",
    "box_prompts_mean",
)

#: Footnote of the Markdown tables for methods that read the reference masks.
ORACLE_NOTE = "† reads the reference masks (oracle / upper bound), not a zero-shot result."

#: Marker appended to the names of methods that read the reference masks.
ORACLE_MARK = "†"

#: Method kinds trained with labels (the learned comparator head and its controls).
TRAINED_KINDS = ("head", "head-static", "head-randtext")

#: Marker and footnote for them.
TRAINED_MARK = "‡"
TRAINED_NOTE = (
    "‡ a learned head trained with labels on the same SAM (comparator), not a zero-shot result."
)

#: Cell text of the Markdown tables where there is no Dice value.
EMPTY_CELL = "–"

_SUMMARY_INPUT = (
    "dataset",
    "organ",
    "method",
    "method_kind",
    "uses_ground_truth",
    "status",
    "dice",
    "dice_status",
    "slice_dice",
    "nsd",
    "hd95",
    "wall_s",
    "peak_gpu_mb",
)
#: Work counts of the strategy: optional columns of the input (older cases.csv lack them).
_WORK = ("encoded_slices", "proposal_slices", "box_prompts")
_KEYS = ("dataset", "organ", "method")
_TEXT = ("dataset", "case", "organ", "method", "method_kind", "status", "dice_status", "montage")
_NUMERIC = ("dice", "slice_dice", "nsd", "hd95", "wall_s", "peak_gpu_mb", *_WORK)


def summarize(
    cases: pd.DataFrame,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Summary of the per-case rows: one row per (dataset, organ, method).

    Rows are ordered by the first appearance in ``cases`` of their dataset, then organ, then
    method. Dice statistics use the rows with a Dice value ("scored" and "false_positive"
    rows; "both_empty" and error rows have none); per-slice Dice, NSD and HD95 likewise use
    the rows that have a value. ``wall_s_mean`` averages the rows with status "ok";
    ``peak_gpu_mb_max`` is the largest peak over all rows (NaN on CPU); ``<count>_mean``
    averages a work count over the rows that have it. Missing statistics (and work counts
    of a table without those columns) are NaN.

    Args:
        cases: the ``cases.csv`` table (empty cells may be NaN or "").
        n_resamples: bootstrap resamples of the confidence intervals.
        confidence: coverage of the confidence intervals, strictly between 0 and 1.
        seed: seed of the bootstrap (the same for every group, so results are reproducible).

    Returns:
        A DataFrame with the columns :data:`SUMMARY_COLUMNS`: text keys and ``method_kind``;
        bool ``uses_ground_truth``; int counts ``cases`` (rows), ``scored``, ``both_empty``,
        ``false_positive`` (by ``dice_status``) and ``errors`` (status "error"); float
        statistics.

    Raises:
        BenchmarkError: a column is missing, or the bootstrap settings are invalid.
    """
    frame = prepare_cases(cases, _SUMMARY_INPUT, _WORK)
    ranks = {key: _first_seen_ranks(frame[key]) for key in _KEYS}
    rows: list[dict[str, Any]] = []
    for (dataset, organ, method), group in frame.groupby(list(_KEYS), sort=False):
        dice = group["dice"].dropna().tolist()
        slice_dice = group["slice_dice"].dropna().tolist()
        dice_mean, dice_std = mean_std(dice)
        dice_low, dice_high = bootstrap_ci(dice, n_resamples, confidence, seed)
        slice_mean, slice_std = mean_std(slice_dice)
        slice_low, slice_high = bootstrap_ci(slice_dice, n_resamples, confidence, seed)
        kinds = [kind for kind in group["method_kind"] if kind]
        peak = group["peak_gpu_mb"].dropna()
        rows.append(
            {
                "dataset": dataset,
                "organ": organ,
                "method": method,
                "method_kind": kinds[0] if kinds else "",
                "uses_ground_truth": bool(group["uses_ground_truth"].any()),
                "cases": len(group),
                "scored": int((group["dice_status"] == STATUS_SCORED).sum()),
                "both_empty": int((group["dice_status"] == STATUS_BOTH_EMPTY).sum()),
                "false_positive": int((group["dice_status"] == STATUS_FALSE_POSITIVE).sum()),
                "errors": int((group["status"] == "error").sum()),
                "dice_mean": _nan(dice_mean),
                "dice_std": _nan(dice_std),
                "dice_ci_low": _nan(dice_low),
                "dice_ci_high": _nan(dice_high),
                "slice_dice_mean": _nan(slice_mean),
                "slice_dice_std": _nan(slice_std),
                "slice_dice_ci_low": _nan(slice_low),
                "slice_dice_ci_high": _nan(slice_high),
                "nsd_mean": _nan(mean_std(group["nsd"].tolist())[0]),
                "hd95_mean": _nan(mean_std(group["hd95"].tolist())[0]),
                "wall_s_mean": _nan(mean_std(group.loc[group["status"] == "ok", "wall_s"])[0]),
                "peak_gpu_mb_max": float(peak.max()) if len(peak) else math.nan,
                **{
                    f"{count}_mean": _nan(mean_std(group[count].dropna().tolist())[0])
                    if count in group
                    else math.nan
                    for count in _WORK
                },
            }
        )
    rows.sort(key=lambda row: tuple(ranks[key][row[key]] for key in _KEYS))
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _dice_tables(
    methods: list[str],
    columns: list[tuple[str, str]],
    headers: list[str],
    labels: Mapping[str, str],
    cells: Mapping[tuple[str, str, str], Mapping[str, Any]],
) -> tuple[list[str], bool]:
    """The Dice and per-slice Dice tables, and whether any cell shows no value."""
    lines: list[str] = []
    any_empty = False
    for title, prefix in (
        ("Dice (per case), mean ± std over cases", "dice"),
        (
            "Per-slice Dice (SaLIP protocol: mean 2D Dice over the slices where the organ is "
            "present; equal to Dice for 2D images), mean ± std over cases",
            "slice_dice",
        ),
    ):
        lines += [f"## {title}", ""]
        lines.append("| Method | " + " | ".join(headers) + " |")
        lines.append("|---|" + "---|" * len(headers))
        for method in methods:
            row_cells = [
                _mean_std_cell(cells.get((dataset, organ, method)), prefix)
                for dataset, organ in columns
            ]
            any_empty = any_empty or EMPTY_CELL in row_cells
            lines.append(f"| {labels[method]} | " + " | ".join(row_cells) + " |")
        lines.append("")
    return lines, any_empty


def summary_markdown(summary: pd.DataFrame, run_info: Mapping[str, Any]) -> str:
    """The ``summary.md`` document for a :func:`summarize` table.

    Contents: a title; one run line from ``run_info`` (keys used when present: "config",
    "date", "device", "salip_version", "sam", "clip"; "confidence" sets the coverage named for
    the confidence intervals, default 0.95); a Dice table and a per-slice Dice table, each
    with one row per method (first-appearance order) and one column per (dataset, organ)
    headed ``organ (dataset)`` (just ``organ`` when there is one dataset), cells "mean ± std"
    with 3 decimals and "–" where there is no Dice value; "†" after methods that read the
    reference, with a footnote; per-method counts of scored, both-empty, false-positive and
    error rows; and the total number of error rows.

    Args:
        summary: the output of :func:`summarize` (or ``summary.csv`` read back).
        run_info: run details; missing keys are skipped.

    Returns:
        The Markdown text, ending with a newline.

    Raises:
        BenchmarkError: a column of :data:`SUMMARY_COLUMNS` is missing.
    """
    _require(summary, SUMMARY_COLUMNS, "summary")
    lines = _title_lines(run_info)
    methods = unique(summary["method"].astype(str))
    if not methods:
        lines += ["No results: the benchmark ran no case.", "", "0 error rows.", ""]
        return "\n".join(lines)

    oracle, trained = _method_flags(summary, methods)
    labels = _method_labels(methods, oracle, trained)
    columns, headers, one_dataset = _table_columns(summary)
    cells: dict[tuple[str, str, str], Mapping[str, Any]] = {
        (str(row["dataset"]), str(row["organ"]), str(row["method"])): row
        for row in summary.to_dict("records")
    }
    if one_dataset:
        lines.append(f"Dataset: {_md_escape(columns[0][0])}.")
        lines.append("")

    table_lines, any_empty = _dice_tables(methods, columns, headers, labels, cells)
    lines += table_lines
    notes = _notes(any(oracle.values()), any(trained.values()), any_empty, run_info)
    for note in notes:
        lines += [note, ""]
    lines += _cases_table(summary, methods, labels)
    return "\n".join(lines)


def _title_lines(run_info: Mapping[str, Any]) -> list[str]:
    """The title and, when ``run_info`` gives anything, the run line."""
    lines = ["# SaLIP benchmark", ""]
    run_line = _run_line(run_info)
    if run_line:
        lines += [run_line, ""]
    return lines


def _method_flags(
    summary: pd.DataFrame, methods: list[str]
) -> tuple[dict[str, bool], dict[str, bool]]:
    """Per method: whether it reads the reference, and whether it is a trained head."""
    oracle = dict.fromkeys(methods, False)
    for method, flag in zip(summary["method"].astype(str), summary["uses_ground_truth"]):
        oracle[method] = oracle[method] or _as_bool(flag)
    trained = dict.fromkeys(methods, False)
    for method, kind in zip(summary["method"].astype(str), summary["method_kind"].astype(str)):
        trained[method] = trained[method] or kind in TRAINED_KINDS
    return oracle, trained


def _method_labels(
    methods: list[str], oracle: Mapping[str, bool], trained: Mapping[str, bool]
) -> dict[str, str]:
    """Escaped method names with the oracle and trained markers."""
    return {
        m: _md_escape(m)
        + (f" {ORACLE_MARK}" if oracle[m] else "")
        + (f" {TRAINED_MARK}" if trained[m] else "")
        for m in methods
    }


def _table_columns(summary: pd.DataFrame) -> tuple[list[tuple[str, str]], list[str], bool]:
    """The (dataset, organ) columns, their headers, and whether there is one dataset."""
    columns = list(dict.fromkeys(zip(summary["dataset"].astype(str), summary["organ"].astype(str))))
    one_dataset = len({dataset for dataset, _ in columns}) == 1
    headers = [
        _md_escape(organ if one_dataset else f"{organ} ({dataset})") for dataset, organ in columns
    ]
    return columns, headers, one_dataset


def _notes(
    any_oracle: bool, any_trained: bool, any_empty: bool, run_info: Mapping[str, Any]
) -> list[str]:
    """The notes under the tables: markers, empty cells and Dice rules, where the CIs are."""
    notes = []
    if any_oracle:
        notes.append(ORACLE_NOTE)
    if any_trained:
        notes.append(TRAINED_NOTE)
    empty_note = (
        f"{EMPTY_CELL} no case with a Dice value (no scored or false-positive case). "
        if any_empty
        else ""
    )
    notes.append(
        f"{empty_note}Cases where prediction and reference are both empty are left out of the "
        "means; false positives (empty reference, non-empty prediction) count as Dice 0."
    )
    coverage = _confidence_percent(run_info.get("confidence", 0.95))
    notes.append(
        f"The {coverage} bootstrap confidence intervals of the means (Dice and per-slice Dice), "
        "mean NSD, HD95, time and GPU memory are in summary.csv."
    )
    return notes


def _cases_table(summary: pd.DataFrame, methods: list[str], labels: Mapping[str, str]) -> list[str]:
    """The "Cases" section: per-method row counts, then the total number of error rows."""
    lines = ["## Cases", ""]
    lines.append(
        "| Method | Rows | Scored | Both empty (excluded from means) | False positive "
        "(Dice 0) | Errors |"
    )
    lines.append("|---|---|---|---|---|---|")
    total_errors = 0
    for method in methods:
        rows = summary[summary["method"].astype(str) == method]
        counts = [
            int(rows[column].sum())
            for column in ("cases", "scored", "both_empty", "false_positive", "errors")
        ]
        total_errors += counts[-1]
        lines.append(f"| {labels[method]} | " + " | ".join(str(c) for c in counts) + " |")
    lines.append("")
    plural = "" if total_errors == 1 else "s"
    lines.append(f"{total_errors} error row{plural}; see cases.csv `error` column.")
    lines.append("")
    return lines


# --- summary helpers -------------------------------------------------------------------------


def prepare_cases(
    cases: pd.DataFrame, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> pd.DataFrame:
    """A copy of the ``required`` (and present ``optional``) columns of ``cases``, text
    columns as str ("" for empty), numeric columns as float (NaN for empty) and
    ``uses_ground_truth`` as bool; a BenchmarkError for missing required columns."""
    _require(cases, required, "cases")
    keep = set(required) | set(optional)
    frame = cases.loc[:, [c for c in cases.columns if c in keep]].copy()
    for column in _TEXT:
        if column in frame:
            frame[column] = [_as_text(v) for v in frame[column]]
    for column in _NUMERIC:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["uses_ground_truth"] = [_as_bool(v) for v in frame["uses_ground_truth"]]
    return frame


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    """Raise a BenchmarkError naming the ``columns`` missing from ``frame``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise BenchmarkError(
            f"the {what} table lacks column(s) {', '.join(missing)}; pass the table written by "
            f"salip benchmark ({what}.csv)"
        )


def _first_seen_ranks(values: pd.Series) -> dict[str, int]:
    """Rank of each distinct value by its first appearance."""
    return {value: rank for rank, value in enumerate(unique(values))}


def unique(values: Any) -> list[str]:
    """Distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def _as_text(value: Any) -> str:
    """A cell as text; None and NaN (empty CSV cells) become ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _as_bool(value: Any) -> bool:
    """A bool cell, also when read back from CSV as text ("True"/"False") or empty (False)."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)


def _nan(value: float | None) -> float:
    """``value`` as a float, NaN for None."""
    return math.nan if value is None else float(value)


def _is_number(value: Any) -> bool:
    """Whether a cell holds a finite number (not None, NaN or text)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --- Markdown helpers ------------------------------------------------------------------------


def _run_line(run_info: Mapping[str, Any]) -> str:
    """One line describing the run from the known ``run_info`` keys; "" when none is set."""
    parts = []
    for key, label in (
        ("config", "config"),
        ("date", "date"),
        ("device", "device"),
        ("salip_version", "salip"),
        ("sam", "SAM"),
        ("clip", "CLIP"),
    ):
        value = run_info.get(key)
        if value is None or value == "":
            continue
        text = _md_escape(str(value))
        parts.append(f"{label} `{text}`" if key == "config" else f"{label} {text}")
    return ("Run: " + " · ".join(parts) + ".") if parts else ""


def _mean_std_cell(row: Mapping[str, Any] | None, prefix: str) -> str:
    """ "mean ± std" with 3 decimals, or "–" without a mean."""
    if row is None or not _is_number(row[f"{prefix}_mean"]):
        return EMPTY_CELL
    mean = float(row[f"{prefix}_mean"])
    std = row[f"{prefix}_std"]
    if row.get("scored", 0) + row.get("false_positive", 0) == 1:
        return f"{mean:.3f} (n=1)"  # one case has no spread to show
    if not _is_number(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {float(std):.3f}"


def _confidence_percent(confidence: Any) -> str:
    """A confidence level as a percentage ("95%")."""
    try:
        return f"{float(confidence) * 100:g}%"
    except (TypeError, ValueError):
        return "95%"


def _md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, no line breaks)."""
    return text.replace("|", "\\|").replace("\n", " ")
