"""The benchmark's figures, from ``cases.csv`` rows: ``figures/dice_boxplot.png`` (per-case
Dice per organ and method) and ``figures/worst_cases.png`` (an overlay montage of each
method's lowest-Dice cases, read from the montage ``.npz`` files next to ``cases.csv``)."""

from __future__ import annotations

import logging
import math
import textwrap
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from salip.apps.bench.report import ORACLE_MARK, prepare_cases, unique
from salip.core.errors import BenchmarkError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["write_figures"]

logger = logging.getLogger(__name__)

_FIGURE_INPUT = ("dataset", "case", "organ", "method", "uses_ground_truth", "dice", "montage")
_MAX_PANEL_COLUMNS = 6
_MAX_FIGURE_WIDTH_IN = 20.0
_REFERENCE_COLOUR = "#00d8ff"  # cyan
_PREDICTION_COLOUR = "#ff3030"  # red


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
    frame = prepare_cases(cases, _FIGURE_INPUT)
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    scored = frame[frame["dice"].notna()]
    oracle = {
        method: bool(frame.loc[frame["method"] == method, "uses_ground_truth"].any())
        for method in unique(frame["method"])
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
    datasets = unique(scored["dataset"])
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
        organs = unique(rows["organ"])
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
    for method in unique(with_montage["method"]):
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
