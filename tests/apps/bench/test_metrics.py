"""Benchmark metrics against hand-computed answers and brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from salip.apps.bench.metrics import (
    DiceResult,
    bootstrap_ci,
    dice_case,
    hd95,
    mean_std,
    nsd,
    slice_dice,
    surface_distances,
)
from salip.core.errors import BenchmarkError


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels as an Nxndim int array (C order), by checking each face neighbour."""
    points = []
    for index in itertools.product(*(range(n) for n in mask.shape)):
        if not mask[index]:
            continue
        for axis in range(mask.ndim):
            for step in (-1, 1):
                neighbour = list(index)
                neighbour[axis] += step
                outside = not 0 <= neighbour[axis] < mask.shape[axis]
                if outside or not mask[tuple(neighbour)]:
                    points.append(index)
                    break
            else:
                continue
            break
    return np.array(points, dtype=np.int64).reshape(-1, mask.ndim)


def _brute_directed(source: np.ndarray, target: np.ndarray, spacing) -> np.ndarray:
    """All-pairs nearest distances (mm) from surface points ``source`` to ``target``."""
    s = source * np.asarray(spacing, dtype=np.float64)
    t = target * np.asarray(spacing, dtype=np.float64)
    return np.sqrt(((s[:, None, :] - t[None, :, :]) ** 2).sum(axis=-1)).min(axis=1)


def _cube(shape, corner, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


# Dice


def test_dice_identical_and_disjoint():
    a = _cube((5, 5, 5), (1, 1, 1), 2)
    b = _cube((5, 5, 5), (3, 3, 3), 2)
    assert dice_case(a, a) == DiceResult(dice=1.0, status="scored")
    assert dice_case(a, b) == DiceResult(dice=0.0, status="scored")


def test_dice_partial_overlap_2d():
    gt = np.zeros((4, 4), dtype=bool)
    gt[0:2, 0:3] = True  # 6 pixels
    pred = np.zeros((4, 4), dtype=bool)
    pred[0:2, 0:2] = True  # 4 pixels, all inside gt
    result = dice_case(pred, gt)
    assert result.status == "scored"
    assert result.dice == pytest.approx(2 * 4 / (4 + 6))  # 0.8


def test_dice_partial_overlap_3d():
    gt = np.zeros((3, 3, 3), dtype=bool)
    gt[0, 0, 0:3] = True
    gt[1, 0, 0:3] = True  # 6 voxels
    pred = np.zeros((3, 3, 3), dtype=bool)
    pred[0, 0, 0:2] = True
    pred[1, 0, 0:2] = True  # 4 voxels, all inside gt
    assert dice_case(pred, gt).dice == pytest.approx(0.8)
    # Non-bool masks: nonzero is the organ.
    assert dice_case(pred.astype(np.uint8) * 7, gt.astype(np.int16)).dice == pytest.approx(0.8)


def test_dice_empty_rules():
    empty = np.zeros((3, 4, 5), dtype=bool)
    full = _cube((3, 4, 5), (0, 1, 1), 2)
    assert dice_case(full, full) == DiceResult(1.0, "scored")
    assert dice_case(empty, empty) == DiceResult(None, "both_empty")
    assert dice_case(full, empty) == DiceResult(0.0, "false_positive")
    assert dice_case(empty, full) == DiceResult(0.0, "scored")


def test_dice_shape_mismatch():
    with pytest.raises(BenchmarkError, match=r"\(3, 4\).*\(4, 3\)"):
        dice_case(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


def test_dice_rejects_4d():
    with pytest.raises(BenchmarkError, match="2D or 3D"):
        dice_case(np.zeros((1, 2, 2, 2), bool), np.zeros((1, 2, 2, 2), bool))


# Per-slice Dice


def _slice_case() -> tuple[np.ndarray, np.ndarray]:
    """4 slices along axis 0; gt on slices 1 and 2 only.

    slice 0: both empty                      -> skipped
    slice 1: gt 2 px, pred 2 px, 1 shared     -> 2*1/(2+2) = 0.5
    slice 2: gt 3 px, pred empty              -> 0.0
    slice 3: gt empty, pred 4 px              -> skipped (gt absent)
    mean over 2 slices = 0.25
    """
    gt = np.zeros((4, 3, 3), dtype=bool)
    pred = np.zeros((4, 3, 3), dtype=bool)
    gt[1, 0, 0:2] = True
    pred[1, 0, 1:3] = True
    gt[2, 1, 0:3] = True
    pred[3, 0:2, 0:2] = True
    return pred, gt


def test_slice_dice_by_hand():
    pred, gt = _slice_case()
    assert slice_dice(pred, gt, axis=0) == (pytest.approx(0.25), 2)
    assert slice_dice(pred, gt, axis=-3) == (pytest.approx(0.25), 2)
    # Same volume with the slice axis moved last.
    moved_pred, moved_gt = np.moveaxis(pred, 0, 2), np.moveaxis(gt, 0, 2)
    assert slice_dice(moved_pred, moved_gt, axis=2) == (pytest.approx(0.25), 2)


def test_slice_dice_empty_gt_and_errors():
    pred, _ = _slice_case()
    assert slice_dice(pred, np.zeros_like(pred), axis=0) == (None, 0)
    with pytest.raises(BenchmarkError, match="out of range"):
        slice_dice(pred, pred, axis=3)
    with pytest.raises(BenchmarkError, match="dice_case"):
        slice_dice(pred[0], pred[0], axis=0)


# HD95


def test_hd95_single_voxels_anisotropic():
    pred = np.zeros((2, 2, 4), dtype=bool)
    gt = np.zeros((2, 2, 4), dtype=bool)
    pred[0, 0, 0] = True
    gt[0, 0, 2] = True
    # Two voxels apart along an axis of 3 mm voxels.
    assert hd95(pred, gt, (1.0, 1.0, 3.0)) == pytest.approx(6.0)


def test_hd95_shifted_cube():
    spacing = (2.5, 1.0, 1.0)
    pred = _cube((6, 5, 5), (1, 1, 1), 3)
    gt = _cube((6, 5, 5), (2, 1, 1), 3)
    # The 9 voxels of pred's leading face are 2.5 mm from gt's surface, the rest 0 or 1 mm, so
    # the top 9 of 26 sorted distances are 2.5 and the 95th percentile is 2.5 (both ways).
    assert hd95(pred, gt, spacing) == pytest.approx(2.5)


def test_hd95_identical_and_empty():
    a = _cube((5, 5, 5), (1, 1, 1), 3)
    empty = np.zeros_like(a)
    assert hd95(a, a, (1.0, 2.0, 3.0)) == 0.0
    assert hd95(a, empty, (1.0, 1.0, 1.0)) is None
    assert hd95(empty, a, (1.0, 1.0, 1.0)) is None
    assert hd95(empty, empty, (1.0, 1.0, 1.0)) is None


def test_hd95_is_max_of_directed_percentiles():
    pred = np.zeros((1, 11), dtype=bool)
    gt = np.zeros((1, 11), dtype=bool)
    pred[0, 0] = pred[0, 10] = True
    gt[0, 0] = True
    # pred->gt distances [0, 10]: 95th percentile 9.5; gt->pred [0]: 0. Pooling both
    # directions (medpy) would give percentile([0, 0, 10], 95) = 9.0 instead.
    assert hd95(pred, gt, (1.0, 1.0)) == pytest.approx(9.5)


# NSD


def _brute_nsd(pred, gt, spacing, tolerance) -> float:
    """NSD by explicit loops over surface voxels."""
    sp = _brute_surface(pred)
    sg = _brute_surface(gt)

    def near(point, others) -> bool:
        for other in others:
            d = math.sqrt(sum(((a - b) * s) ** 2 for a, b, s in zip(point, other, spacing)))
            if d <= tolerance:
                return True
        return False

    within = sum(near(p, sg) for p in sp) + sum(near(g, sp) for g in sg)
    return within / (len(sp) + len(sg))


def test_nsd_shifted_cube():
    spacing = (2.0, 2.0, 2.0)
    pred = _cube((6, 5, 5), (1, 1, 1), 3)
    gt = _cube((6, 5, 5), (2, 1, 1), 3)
    # Each cube has 26 surface voxels. From pred to gt: the 9 voxels of pred's leading face
    # and the centre of its trailing face (which is gt's interior voxel) are 2 mm from gt's
    # surface; the other 16 coincide with gt surface voxels (0 mm). By symmetry the same 16
    # of gt's 26 are at 0 mm. Tolerance 1 mm: (16 + 16) / 52 = 8/13.
    assert nsd(pred, gt, spacing, 1.0) == pytest.approx(8 / 13)
    assert nsd(pred, gt, spacing, 1.0) == pytest.approx(_brute_nsd(pred, gt, spacing, 1.0))
    assert nsd(pred, gt, spacing, 2.0) == pytest.approx(1.0)
    assert nsd(pred, gt, spacing, 0.0) == pytest.approx(8 / 13)


def test_nsd_random_matches_brute_force():
    rng = np.random.default_rng(1)
    # Random voxels around solid blocks, so that some voxels are interior (not surface).
    pred = (rng.random((5, 6, 4)) < 0.3) | _cube((5, 6, 4), (1, 1, 0), 3)
    gt = (rng.random((5, 6, 4)) < 0.3) | _cube((5, 6, 4), (1, 2, 1), 3)
    spacing = (0.8, 1.5, 2.5)
    for tolerance in (0.5, 1.0, 1.6, 3.0):
        expected = _brute_nsd(pred, gt, spacing, tolerance)
        assert nsd(pred, gt, spacing, tolerance) == pytest.approx(expected)


def test_nsd_identical_and_empty():
    a = _cube((5, 5, 5), (1, 1, 1), 3)
    empty = np.zeros_like(a)
    spacing = (1.0, 1.0, 1.0)
    assert nsd(a, a, spacing, 0.0) == 1.0
    assert nsd(a, empty, spacing, 1.0) == 0.0
    assert nsd(empty, a, spacing, 1.0) == 0.0
    assert nsd(empty, empty, spacing, 1.0) is None


def test_nsd_bad_tolerance():
    a = _cube((5, 5, 5), (1, 1, 1), 3)
    for bad in (-1.0, float("nan")):
        with pytest.raises(BenchmarkError, match="tolerance"):
            nsd(a, a, (1.0, 1.0, 1.0), bad)


# Surface distances


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(0)
    # Random voxels around solid blocks, so that some voxels are interior (not surface).
    pred = (rng.random((6, 7, 5)) < 0.3) | _cube((6, 7, 5), (1, 1, 1), 4)
    gt = (rng.random((6, 7, 5)) < 0.3) | _cube((6, 7, 5), (2, 2, 0), 4)
    spacing = (0.7, 1.3, 2.1)
    pred_to_gt, gt_to_pred = surface_distances(pred, gt, spacing)
    sp, sg = _brute_surface(pred), _brute_surface(gt)
    assert pred_to_gt.shape == (len(sp),)
    assert gt_to_pred.shape == (len(sg),)
    np.testing.assert_allclose(pred_to_gt, _brute_directed(sp, sg, spacing))
    np.testing.assert_allclose(gt_to_pred, _brute_directed(sg, sp, spacing))
    assert len(sp) < np.count_nonzero(pred) and len(sg) < np.count_nonzero(gt)


def test_surface_distances_ignore_padding():
    # The implementation crops to the masks' bounding box; padding must not change anything,
    # and masks touching the array border must still have their border voxels as surface.
    rng = np.random.default_rng(2)
    pred = rng.random((4, 5, 3)) < 0.5
    gt = rng.random((4, 5, 3)) < 0.5
    spacing = (1.0, 0.5, 3.0)
    padded = [np.pad(m, ((3, 1), (0, 2), (2, 2))) for m in (pred, gt)]
    tight = surface_distances(pred, gt, spacing)
    loose = surface_distances(*padded, spacing)
    for a, b in zip(tight, loose):
        np.testing.assert_allclose(a, b)


def test_surface_distances_2d_and_empty():
    pred = np.zeros((4, 4), dtype=bool)
    pred[1:3, 1:3] = True
    empty = np.zeros_like(pred)
    to_empty, from_empty = surface_distances(pred, empty, (1.0, 1.0))
    assert to_empty.shape == (4,) and np.all(np.isinf(to_empty))
    assert from_empty.shape == (0,)
    both = surface_distances(empty, empty, (1.0, 1.0))
    assert both[0].shape == (0,) and both[1].shape == (0,)


@pytest.mark.parametrize(
    "spacing",
    [(1.0, 1.0), (1.0, 1.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), 1.0, (1.0, np.nan, 1.0)],
)
def test_bad_spacing(spacing):
    a = _cube((4, 4, 4), (1, 1, 1), 2)
    with pytest.raises(BenchmarkError, match="spacing"):
        surface_distances(a, a, spacing)


def test_distance_metrics_shape_mismatch():
    with pytest.raises(BenchmarkError, match="shape"):
        hd95(np.zeros((3, 3, 3), bool), np.zeros((3, 3, 4), bool), (1.0, 1.0, 1.0))
    with pytest.raises(BenchmarkError, match="shape"):
        nsd(np.zeros((3, 3), bool), np.zeros((3, 4), bool), (1.0, 1.0), 1.0)


# Summaries


def test_mean_std():
    assert mean_std([1.0, None, 2.0, float("nan"), 3.0]) == (2.0, pytest.approx(1.0))
    assert mean_std([0.7]) == (0.7, 0.0)
    assert mean_std([]) == (None, None)
    assert mean_std([None, float("nan")]) == (None, None)


def test_bootstrap_ci():
    values = [0.1, 0.4, 0.5, 0.6, 0.9, 0.75, 0.3]
    low, high = bootstrap_ci(values, seed=3)
    assert low < float(np.mean(values)) < high
    assert low >= 0.1 and high <= 0.9
    # Deterministic for a seed, and None / NaN are ignored.
    assert bootstrap_ci(values, seed=3) == (low, high)
    assert bootstrap_ci([*values, None, float("nan")], seed=3) == (low, high)
    # A wider confidence gives a wider interval from the same resamples.
    wide = bootstrap_ci(values, confidence=0.99, seed=3)
    assert wide[0] <= low and high <= wide[1]


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([0.42, None]) == (0.42, 0.42)
    assert bootstrap_ci([]) == (None, None)
    assert bootstrap_ci([None]) == (None, None)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(BenchmarkError, match="confidence"):
        bootstrap_ci([0.1, 0.2], confidence=1.0)
    with pytest.raises(BenchmarkError, match="n_resamples"):
        bootstrap_ci([0.1, 0.2], n_resamples=0)
