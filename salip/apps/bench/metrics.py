"""Segmentation metrics for the benchmark: Dice, per-slice Dice, HD95, NSD and summaries.

Every function is pure (numpy and scipy only) and works on 2D (HxW) or 3D (XxYxZ) masks. A
mask may be any array whose nonzero entries are the organ; it is read as a bool array. The
prediction and the reference (``gt``) must have the same shape, i.e. lie on the same grid.
Distances are in millimetres, computed from ``spacing``: one voxel size in mm per array axis,
in array-axis order.

Empty masks are not errors. Dice follows :func:`dice_case`'s rules; the distance metrics
return ``None`` where they are undefined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from salip.core.errors import BenchmarkError

__all__ = [
    "STATUS_BOTH_EMPTY",
    "STATUS_FALSE_POSITIVE",
    "STATUS_SCORED",
    "bootstrap_ci",
    "dice_case",
    "DiceResult",
    "hd95",
    "mean_std",
    "nsd",
    "slice_dice",
    "surface_distances",
]

STATUS_SCORED = "scored"
STATUS_BOTH_EMPTY = "both_empty"
STATUS_FALSE_POSITIVE = "false_positive"


@dataclass(frozen=True)
class DiceResult:
    """Dice of one case and how it was obtained.

    ``status`` is one of:

    - ``"scored"``: the reference is non-empty; ``dice`` is in [0, 1] (0.0 when the prediction
      is empty).
    - ``"both_empty"``: reference and prediction are both empty; ``dice`` is ``None`` and the
      case is left out of means (but should still be counted and reported).
    - ``"false_positive"``: the reference is empty but the prediction is not; ``dice`` is 0.0.
    """

    dice: float | None
    status: str


def dice_case(pred: np.ndarray, gt: np.ndarray) -> DiceResult:
    """Dice 2|A∩B| / (|A| + |B|) of one case, with explicit rules for empty masks.

    Args:
        pred: predicted mask, HxW or XxYxZ array (bool; nonzero = organ).
        gt: reference mask, same shape as ``pred``.

    Returns:
        A :class:`DiceResult`; see its docstring for the empty-mask rules.

    Raises:
        BenchmarkError: the masks differ in shape or are not 2D/3D.
    """
    p, g = _mask_pair(pred, gt)
    n_pred = int(np.count_nonzero(p))
    n_gt = int(np.count_nonzero(g))
    if n_gt == 0:
        if n_pred == 0:
            return DiceResult(dice=None, status=STATUS_BOTH_EMPTY)
        return DiceResult(dice=0.0, status=STATUS_FALSE_POSITIVE)
    n_both = int(np.count_nonzero(p & g))
    return DiceResult(dice=2.0 * n_both / (n_pred + n_gt), status=STATUS_SCORED)


def slice_dice(pred: np.ndarray, gt: np.ndarray, axis: int) -> tuple[float | None, int]:
    """Mean 2D Dice over the slices along ``axis`` where the reference is present (SaLIP).

    Slices with an empty reference are skipped whatever the prediction holds; a slice with a
    non-empty reference and an empty prediction scores 0.

    Args:
        pred: predicted mask, XxYxZ array (bool; nonzero = organ).
        gt: reference mask, same shape as ``pred``.
        axis: the array axis to slice along (negative values count from the end).

    Returns:
        ``(mean_dice, n_slices)``: the mean of the per-slice Dice values (float in [0, 1]) and
        the number of slices averaged; ``(None, 0)`` when the reference is empty everywhere.

    Raises:
        BenchmarkError: the masks differ in shape, are not 3D, or ``axis`` is out of range.
    """
    p, g = _mask_pair(pred, gt)
    if p.ndim != 3:
        raise BenchmarkError(
            f"slice_dice needs 3D masks, got shape {p.shape}; use dice_case for 2D masks"
        )
    if not -3 <= axis < 3:
        raise BenchmarkError(f"slice axis {axis} is out of range for 3D masks; use 0, 1 or 2")
    p2 = np.moveaxis(p, axis, 0).reshape(p.shape[axis], -1)
    g2 = np.moveaxis(g, axis, 0).reshape(g.shape[axis], -1)
    n_gt = np.count_nonzero(g2, axis=1)
    present = n_gt > 0
    n_slices = int(np.count_nonzero(present))
    if n_slices == 0:
        return None, 0
    n_pred = np.count_nonzero(p2[present], axis=1)
    n_both = np.count_nonzero(p2[present] & g2[present], axis=1)
    dice = 2.0 * n_both / (n_pred + n_gt[present])
    return float(dice.mean()), n_slices


# Hand-written because none of the project's dependencies offers a well-kept surface-distance
# implementation (medpy and DeepMind's surface-distance are not dependencies; MONAI would be a
# heavy one). This is the standard approach used by MONAI and medpy: a surface voxel is a mask
# voxel with a 6-connected (4-connected in 2D) neighbour outside the mask or outside the
# array, and distances come from a Euclidean distance transform of the other mask's surface.
def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances in mm between the surface voxels of two masks.

    The surface of a mask is ``mask & ~binary_erosion(mask)`` with a face-connected structuring
    element and voxels outside the array counted as background, so voxels on the array border
    are surface voxels. Distances are between voxel centres.

    Args:
        pred: predicted mask, HxW or XxYxZ array (bool; nonzero = organ).
        gt: reference mask, same shape as ``pred``.
        spacing: voxel size in mm per array axis (one positive value per axis).

    Returns:
        ``(pred_to_gt, gt_to_pred)``: 1D float64 arrays in mm. ``pred_to_gt`` has one entry per
        surface voxel of ``pred`` (in C order): the distance to the nearest surface voxel of
        ``gt``; ``gt_to_pred`` likewise the other way. An empty mask gives an empty array for
        its own direction, and ``inf`` for every entry of the other direction.

    Raises:
        BenchmarkError: the masks differ in shape or are not 2D/3D, or ``spacing`` is invalid.
    """
    p, g = _mask_pair(pred, gt)
    sampling = _spacing(spacing, p.ndim)
    union = p | g
    if not union.any():
        empty = np.zeros(0, dtype=np.float64)
        return empty, empty.copy()
    # Crop to the bounding box of both masks: every foreground voxel is inside it, so erosion
    # (background outside the box) and nearest-surface distances are unchanged.
    box = _bounding_box(union)
    p, g = p[box], g[box]
    structure = ndimage.generate_binary_structure(p.ndim, 1)
    p_surface = p & ~ndimage.binary_erosion(p, structure=structure, border_value=0)
    g_surface = g & ~ndimage.binary_erosion(g, structure=structure, border_value=0)
    return (
        _directed_distances(p_surface, g_surface, sampling),
        _directed_distances(g_surface, p_surface, sampling),
    )


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float | None:
    """95th-percentile Hausdorff distance in mm between the surfaces of two masks.

    The larger of the two directed 95th percentiles (prediction to reference and back), with
    numpy's linear-interpolation percentile: the convention of MONAI
    (``compute_hausdorff_distance(percentile=95)``) and DeepMind's surface-distance
    (``compute_robust_hausdorff``). medpy's ``hd95`` instead takes the 95th percentile of both
    directions pooled, which can be smaller.

    Args:
        pred: predicted mask, HxW or XxYxZ array (bool; nonzero = organ).
        gt: reference mask, same shape as ``pred``.
        spacing: voxel size in mm per array axis (one positive value per axis).

    Returns:
        The distance in mm (float >= 0), or ``None`` when either mask is empty.

    Raises:
        BenchmarkError: the masks differ in shape or are not 2D/3D, or ``spacing`` is invalid.
    """
    pred_to_gt, gt_to_pred = surface_distances(pred, gt, spacing)
    if pred_to_gt.size == 0 or gt_to_pred.size == 0:
        return None
    return float(max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95)))


def nsd(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float
) -> float | None:
    """Normalised surface distance (surface Dice) at a tolerance in mm.

    ``(#pred surface voxels within tolerance of gt's surface + #gt surface voxels within
    tolerance of pred's surface) / (#pred surface voxels + #gt surface voxels)``, where
    "within" means a distance <= ``tolerance_mm``. This counts surface voxels, each with the
    same weight; DeepMind's surface-distance library instead weights each surface element by
    its area, so the two can differ slightly on anisotropic grids and curved surfaces.

    Args:
        pred: predicted mask, HxW or XxYxZ array (bool; nonzero = organ).
        gt: reference mask, same shape as ``pred``.
        spacing: voxel size in mm per array axis (one positive value per axis).
        tolerance_mm: the tolerance in mm (>= 0).

    Returns:
        A float in [0, 1]; 0.0 when exactly one mask is empty; ``None`` when both are empty.

    Raises:
        BenchmarkError: the masks differ in shape or are not 2D/3D, ``spacing`` is invalid, or
            ``tolerance_mm`` is negative or NaN.
    """
    if not tolerance_mm >= 0:
        raise BenchmarkError(
            f"NSD tolerance must be a distance in mm >= 0, got {tolerance_mm!r}; fix the "
            "tolerance setting"
        )
    pred_to_gt, gt_to_pred = surface_distances(pred, gt, spacing)
    total = pred_to_gt.size + gt_to_pred.size
    if total == 0:
        return None
    within = np.count_nonzero(pred_to_gt <= tolerance_mm) + np.count_nonzero(
        gt_to_pred <= tolerance_mm
    )
    return float(within / total)


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that are not ``None`` or NaN.

    The standard deviation uses ddof=1 (the sample estimate) when there are two or more values
    and is 0.0 for a single value.

    Args:
        values: per-case scores (floats; ``None`` and NaN entries are skipped).

    Returns:
        ``(mean, std)`` as floats, or ``(None, None)`` when no value is left.
    """
    v = _clean(values)
    if v.size == 0:
        return None, None
    std = float(np.std(v, ddof=1)) if v.size > 1 else 0.0
    return float(np.mean(v)), std


def bootstrap_ci(
    values: Iterable[float | None],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """Percentile-bootstrap confidence interval of the mean of the values.

    Draws ``n_resamples`` resamples (with replacement, same size as the data) with
    ``numpy.random.default_rng(seed)``, so the result is deterministic for a given seed, and
    returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of their means.

    Args:
        values: per-case scores (floats; ``None`` and NaN entries are skipped).
        n_resamples: number of bootstrap resamples (>= 1).
        confidence: coverage of the interval, strictly between 0 and 1.
        seed: seed of the random generator.

    Returns:
        ``(low, high)`` as floats; ``(v, v)`` for a single value ``v``; ``(None, None)`` when
        no value is left.

    Raises:
        BenchmarkError: ``n_resamples`` < 1 or ``confidence`` outside (0, 1).
    """
    if n_resamples < 1:
        raise BenchmarkError(f"bootstrap needs n_resamples >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise BenchmarkError(
            f"bootstrap confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence}"
        )
    v = _clean(values)
    if v.size == 0:
        return None, None
    if v.size == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    # Resample in chunks so that memory stays near 8 MB whatever the number of cases.
    chunk = max(1, 1_000_000 // v.size)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _mask_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of one 2D or 3D shape, or a BenchmarkError."""
    p = np.asarray(pred)
    g = np.asarray(gt)
    if p.shape != g.shape:
        raise BenchmarkError(
            f"prediction shape {p.shape} differs from reference shape {g.shape}; resample the "
            "prediction onto the reference grid before scoring"
        )
    if p.ndim not in (2, 3):
        raise BenchmarkError(
            f"masks must be 2D or 3D, got shape {p.shape}; select one organ and drop "
            "channel or time axes before scoring"
        )
    return p.astype(bool, copy=False), g.astype(bool, copy=False)


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """``spacing`` as a tuple of ``ndim`` positive finite floats (mm), or a BenchmarkError."""
    try:
        values = tuple(float(s) for s in np.asarray(spacing, dtype=np.float64).reshape(-1))
        shape = np.shape(spacing)
    except (TypeError, ValueError) as error:
        raise BenchmarkError(
            f"spacing must be {ndim} numbers (mm per axis), got {spacing!r}"
        ) from error
    if shape != (ndim,) or not all(math.isfinite(s) and s > 0 for s in values):
        raise BenchmarkError(
            f"spacing must be one positive voxel size in mm per axis ({ndim} values), got "
            f"{spacing!r}; read it from the image header"
        )
    return values


def _clean(values: Iterable[float | None]) -> np.ndarray:
    """The values that are not ``None`` or NaN, as a 1D float64 array."""
    kept = [float(v) for v in values if v is not None]
    array = np.asarray(kept, dtype=np.float64)
    return array[~np.isnan(array)]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of a non-empty mask."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def _directed_distances(
    source: np.ndarray, target: np.ndarray, sampling: tuple[float, ...]
) -> np.ndarray:
    """Distance in mm from each True voxel of ``source`` to the nearest True voxel of
    ``target`` (1D float64 array, C order); ``inf`` everywhere when ``target`` is empty."""
    n_source = int(np.count_nonzero(source))
    if n_source == 0:
        return np.zeros(0, dtype=np.float64)
    if not target.any():
        return np.full(n_source, np.inf, dtype=np.float64)
    distance = ndimage.distance_transform_edt(~target, sampling=sampling)
    return np.asarray(distance[source], dtype=np.float64)
