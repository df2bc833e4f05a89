"""Benchmark summaries: ``summary.csv``, ``summary.md`` and the figures, from ``cases.csv`` rows.

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
:func:`write_figures`
    ``figures/dice_boxplot.png`` (per-case Dice per organ and method) and
    ``figures/worst_cases.png`` (overlay montage of each method's lowest-Dice cases, read from
    the montage ``.npz`` files next to ``cases.csv``).

Dice rules (see :func:`salip.apps.bench.metrics.dice_case`): "both_empty" rows have no Dice and are
left out of means but counted; "false_positive" rows have Dice 0.0 and count in means.
"""

from __future__ import annotations

import logging
import math
import textwrap
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from salip.apps.bench.metrics import (
    STATUS_BOTH_EMPTY,
    STATUS_FALSE_POSITIVE,
    STATUS_SCORED,
    bootstrap_ci,
    mean_std,
)
from salip.core.errors import BenchmarkError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
_FIGURE_INPUT = ("dataset", "case", "organ", "method", "uses_ground_truth", "dice", "montage")
_KEYS = ("dataset", "organ", "method")
_TEXT = ("dataset", "case", "organ", "method", "method_kind", "status", "dice_status", "montage")
_NUMERIC = ("dice", "slice_dice", "nsd", "hd95", "wall_s", "peak_gpu_mb", *_WORK)

_MAX_PANEL_COLUMNS = 6
_MAX_FIGURE_WIDTH_IN = 20.0
_REFERENCE_COLOUR = "#00d8ff"  # cyan
_PREDICTION_COLOUR = "#ff3030"  # red


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
    frame = _prepare(cases, _SUMMARY_INPUT, _WORK)
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
    methods = _unique(summary["method"].astype(str))
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


def write_figures(cases: pd.DataFrame, out_dir: Path, *, worst: int = 6) -> list[Path]:
    """Write the benchmark figures into ``out_dir / "figures"`` (created if needed).

    * ``dice_boxplot.png``: per-case Dice (rows with a Dice value) as box plots with the
      individual cases as dots; one subplot per dataset, organs along x, one box per method
      (colour, legend; methods that read the reference marked "†").
    * ``worst_cases.png``: for each method, its ``worst`` lowest-Dice rows that have montage
      data, one panel each: the grey slice with the reference (cyan) and the prediction (red)
      as filled contours, titled "method · case · organ · Dice 0.123". The ``montage`` column
      is a path relative to ``out_dir`` of an ``.npz`` holding ``<organ>__image`` (HxW uint8),
      ``<organ>__gt`` and ``<organ>__pred`` (HxW bool) and ``<organ>__index`` (int slice
      index); rows whose file is missing, unreadable or lacks the keys are skipped with a
      warning.

    Both files are always written: with nothing to plot a figure says "no scored cases".

    Args:
        cases: the ``cases.csv`` table.
        out_dir: the benchmark output folder.
        worst: number of lowest-Dice cases shown per method (>= 1).

    Returns:
        The paths written: ``[dice_boxplot.png, worst_cases.png]``.

    Raises:
        BenchmarkError: a column is missing or ``worst`` < 1.
    """
    if worst < 1:
        raise BenchmarkError(f"worst must be >= 1 case per method, got {worst}")
    frame = _prepare(cases, _FIGURE_INPUT)
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    scored = frame[frame["dice"].notna()]
    oracle = {
        method: bool(frame.loc[frame["method"] == method, "uses_ground_truth"].any())
        for method in _unique(frame["method"])
    }
    labels = {m: m + (f" {ORACLE_MARK}" if is_oracle else "") for m, is_oracle in oracle.items()}

    boxplot = figures / "dice_boxplot.png"
    if scored.empty:
        _save(_message_figure("no scored cases"), boxplot)
    else:
        _save(_boxplot_figure(scored, list(oracle), labels), boxplot)

    montage = figures / "worst_cases.png"
    panels = _worst_panels(scored, out_dir, worst)
    if not panels:
        _save(_message_figure("no scored cases with montage slices"), montage)
    else:
        _save(_montage_figure(panels, labels, worst), montage)
    return [boxplot, montage]


# --- summary helpers -------------------------------------------------------------------------


def _prepare(
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
    return {value: rank for rank, value in enumerate(_unique(values))}


def _unique(values: Any) -> list[str]:
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


# --- figure helpers --------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A Figure with an Agg canvas and constrained layout, outside pyplot's global state."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> None:
    """Write ``figure`` as a PNG and release its artists."""
    try:
        figure.savefig(path, dpi=100)
    finally:
        figure.clear()
    logger.info("wrote %s", path)


def _message_figure(message: str) -> Figure:
    """A small figure that only says ``message``."""
    figure = _new_figure(6.0, 2.0)
    figure.text(0.5, 0.5, message, ha="center", va="center", fontsize=14)
    return figure


def _colours(n: int) -> list[Any]:
    """``n`` distinct colours (tab10, repeated beyond ten)."""
    palette = colormaps["tab10"].colors
    return [palette[i % len(palette)] for i in range(n)]


def _boxplot_figure(scored: pd.DataFrame, methods: list[str], labels: dict[str, str]) -> Figure:
    """Box plots of per-case Dice: one subplot per dataset, organs on x, a box per method."""
    datasets = _unique(scored["dataset"])
    plotted = [m for m in methods if m in set(scored["method"])]
    colour = dict(zip(plotted, _colours(len(plotted))))
    max_organs = max(scored.groupby("dataset")["organ"].nunique())
    width_in = min(_MAX_FIGURE_WIDTH_IN, max(6.0, 0.45 * max_organs * len(plotted) + 3.0))
    height_in = min(4.0 * len(datasets), 24.0)
    figure = _new_figure(width_in, height_in)
    axes = figure.subplots(len(datasets), 1, squeeze=False)[:, 0]
    rng = np.random.default_rng(0)
    box_width = 0.8 / len(plotted)
    for ax, dataset in zip(axes, datasets):
        rows = scored[scored["dataset"] == dataset]
        organs = _unique(rows["organ"])
        for j, method in enumerate(plotted):
            values, positions = [], []
            for i, organ in enumerate(organs):
                dice = rows.loc[(rows["organ"] == organ) & (rows["method"] == method), "dice"]
                if len(dice):
                    values.append(dice.to_numpy(dtype=float))
                    positions.append(i - 0.4 + box_width * (j + 0.5))
            if values:
                _draw_boxes(ax, values, positions, box_width, colour[method], rng)
        ax.set_xticks(range(len(organs)))
        rotate = len(organs) > 6
        ax.set_xticklabels(organs, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.5, len(organs) - 0.5)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("Dice")
        ax.set_title(dataset if len(datasets) > 1 else f"Dice per case · {dataset}")
        ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=colour[m], alpha=0.6, label=labels[m]) for m in plotted]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return figure


def _draw_boxes(
    ax: Axes,
    values: list[np.ndarray],
    positions: list[float],
    width: float,
    colour: Any,
    rng: np.random.Generator,
) -> None:
    """One method's boxes at ``positions`` with its cases as jittered dots."""
    parts = ax.boxplot(
        values,
        positions=positions,
        widths=width * 0.8,
        patch_artist=True,
        manage_ticks=False,
        showfliers=False,
    )
    for box in parts["boxes"]:
        box.set_facecolor(colour)
        box.set_alpha(0.6)
    for median in parts["medians"]:
        median.set_color("black")
    for position, dice in zip(positions, values):
        jitter = rng.uniform(-width * 0.25, width * 0.25, size=dice.size)
        ax.scatter(position + jitter, dice, s=8, color=colour, edgecolors="black", linewidths=0.3)


def _worst_panels(
    scored: pd.DataFrame, out_dir: Path, worst: int
) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per method (first-appearance order), up to ``worst`` lowest-Dice panels that load."""
    cache: dict[Path, dict[str, np.ndarray] | None] = {}
    loaded: dict[tuple[Path, str], dict[str, Any] | None] = {}
    result = []
    with_montage = scored[scored["montage"] != ""]
    for method in _unique(with_montage["method"]):
        rows = with_montage[with_montage["method"] == method].sort_values("dice", kind="stable")
        panels: list[dict[str, Any]] = []
        for row in rows.to_dict("records"):
            if len(panels) == worst:
                break
            key = (out_dir / row["montage"], row["organ"])
            if key not in loaded:  # one load (and at most one warning) per file and organ
                loaded[key] = _montage_slices(*key, cache)
            slices = loaded[key]
            if slices is not None:
                panels.append({**row, **slices})
        if panels:
            result.append((method, panels))
    return result


def _montage_slices(
    path: Path, organ: str, cache: dict[Path, dict[str, np.ndarray] | None]
) -> dict[str, Any] | None:
    """``{"image", "gt", "pred", "index"}`` of one organ from a montage .npz, or None (with a
    warning) when the file is missing or unreadable or lacks valid arrays for the organ."""
    if path not in cache:
        try:
            with np.load(path, allow_pickle=False) as data:
                cache[path] = {key: data[key] for key in data.files}
        except FileNotFoundError:
            logger.warning(
                "montage file %s is missing; its cases are left out of the montage", path
            )
            cache[path] = None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            logger.warning("cannot read montage file %s (%s); left out of the montage", path, error)
            cache[path] = None
    arrays = cache[path]
    if arrays is None:
        return None
    keys = {part: f"{organ}__{part}" for part in ("image", "gt", "pred", "index")}
    missing = [key for key in keys.values() if key not in arrays]
    if missing:
        logger.warning(
            "montage file %s lacks %s; %s is left out of the montage",
            path,
            ", ".join(missing),
            organ,
        )
        return None
    image = np.asarray(arrays[keys["image"]])
    gt = np.asarray(arrays[keys["gt"]]).astype(bool)
    pred = np.asarray(arrays[keys["pred"]]).astype(bool)
    if image.ndim != 2 or gt.shape != image.shape or pred.shape != image.shape:
        logger.warning(
            "montage file %s has image %s, reference %s and prediction %s for %s; expected one "
            "HxW shape; left out of the montage",
            path,
            image.shape,
            gt.shape,
            pred.shape,
            organ,
        )
        return None
    try:
        index = int(np.asarray(arrays[keys["index"]]).reshape(-1)[0])
    except (IndexError, TypeError, ValueError):
        index = -1
    return {"image": image, "gt": gt, "pred": pred, "index": index}


def _montage_figure(
    panels: list[tuple[str, list[dict[str, Any]]]], labels: dict[str, str], worst: int
) -> Figure:
    """Overlay panels of the worst cases: one block of rows per method, at most 6 columns."""
    n_columns = min(worst, _MAX_PANEL_COLUMNS, max(len(p) for _, p in panels))
    layout = []  # (row, column, method, panel)
    row = 0
    for method, method_panels in panels:
        for k, panel in enumerate(method_panels):
            layout.append((row + k // n_columns, k % n_columns, method, panel))
        row += math.ceil(len(method_panels) / n_columns)
    n_rows = row
    figure = _new_figure(max(2.6 * n_columns, 4.0), 2.8 * n_rows + 0.6)
    axes = figure.subplots(n_rows, n_columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    reference_rgba = to_rgba(_REFERENCE_COLOUR, 0.3)
    prediction_rgba = to_rgba(_PREDICTION_COLOUR, 0.3)
    for r, c, method, panel in layout:
        ax = axes[r, c]
        ax.imshow(panel["image"], cmap="gray", interpolation="nearest")
        overlay = np.zeros((*panel["gt"].shape, 4), dtype=float)
        overlay[panel["gt"]] = reference_rgba
        overlay[panel["pred"]] = prediction_rgba
        ax.imshow(overlay, interpolation="nearest")
        for mask, colour in ((panel["gt"], _REFERENCE_COLOUR), (panel["pred"], _PREDICTION_COLOUR)):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.8)
        title = f"{labels.get(method, method)} · {panel['case']} · {panel['organ']} · "
        title += f"Dice {panel['dice']:.3f}"
        ax.set_title(textwrap.fill(title, width=40, break_long_words=False), fontsize=7)
        if panel["index"] >= 0:
            ax.text(
                0.02,
                0.02,
                f"slice {panel['index']}",
                transform=ax.transAxes,
                color="white",
                fontsize=6,
                va="bottom",
            )
    figure.suptitle("Lowest-Dice cases per method\nreference: cyan · prediction: red", fontsize=10)
    return figure
