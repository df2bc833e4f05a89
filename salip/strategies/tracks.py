"""An organ's track along the slicing axis: one box per slice it was found on, picks that
stray from it, the best chain through several candidates per slice, and boxes for the
slices between.

Boxes are XYXY in pixels of the display slices (max corner inclusive); slices are indices
along the slicing axis of the canonical volume.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "best_chain",
    "Box",
    "centre",
    "distance_from_track",
    "expected_centre",
    "gap_boxes",
    "holds_centre",
    "in_plane_mm",
    "neighbours",
    "off_track",
    "worst_off_track",
]

Box = Sequence[float]


def centre(box: Box) -> np.ndarray:
    """(x, y) centre of an XYXY box."""
    x0, y0, x1, y1 = box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def expected_centre(track: Mapping[int, Box], neighbours: Sequence[int], index: int) -> np.ndarray:
    """The track's centre at ``index``: its neighbours' centres (one or two slices),
    interpolated along the axis."""
    if len(neighbours) == 1:
        return centre(track[neighbours[0]])
    a, b = neighbours
    w = (index - a) / (b - a)
    return (1 - w) * centre(track[a]) + w * centre(track[b])


def _mm(offset: np.ndarray, pixel_mm: Sequence[float]) -> float:
    """Length in mm of an (x, y) offset in pixels; ``pixel_mm`` the (row, column) size of a
    display pixel."""
    scale = np.array(pixel_mm[::-1], dtype=float)  # (x, y) = (column, row)
    return float(np.hypot(*(offset * scale)))


def neighbours(slices: Sequence[int], index: int) -> list[int]:
    """The nearest slice of ``slices`` (ascending) below ``index`` and the nearest above,
    where there is one; ``index`` itself is not its own neighbour."""
    below, above = bisect_left(slices, index), bisect_right(slices, index)
    return slices[max(0, below - 1) : below] + slices[above : above + 1]


def distance_from_track(
    track: Mapping[int, Box], index: int, box: Box, pixel_mm: Sequence[float]
) -> float | None:
    """How far (mm, in plane) ``box``'s centre on slice ``index`` lies from the track's
    centre there, interpolated from the track's neighbouring slices (:func:`neighbours`);
    None when the track has no other slice."""
    near = neighbours(sorted(track), index)
    if not near:
        return None
    return _mm(centre(box) - expected_centre(track, near, index), pixel_mm)


def worst_off_track(
    track: Mapping[int, Box], pixel_mm: Sequence[float], max_mm: float
) -> tuple[int, float] | None:
    """The slice whose box centre lies farthest (in mm, in plane) from the track of its
    neighbouring slices in ``track``, if farther than ``max_mm``: (slice, distance).

    Rejecting the worst first, one at a time (:func:`off_track`), keeps one stray pick
    from also condemning the good picks beside it.

    Args:
        track: slice -> box.
        pixel_mm: (row, column) size of a display pixel in mm.
        max_mm: the largest distance allowed.
    """
    slices = sorted(track)
    worst: tuple[int, float] | None = None
    for k in slices:
        near = neighbours(slices, k)
        if not near:
            continue
        distance = _mm(centre(track[k]) - expected_centre(track, near, k), pixel_mm)
        if distance > max_mm and (worst is None or distance > worst[1]):
            worst = (k, distance)
    return worst


def off_track(
    track: dict[int, Box], pixel_mm: Sequence[float], max_mm: float
) -> list[tuple[int, float]]:
    """Remove from ``track``, worst first, every slice off the track of its neighbours
    (:func:`worst_off_track`); the removed (slice, distance) in order."""
    removed = []
    while (worst := worst_off_track(track, pixel_mm, max_mm)) is not None:
        track.pop(worst[0])
        removed.append(worst)
    return removed


def gap_boxes(track: Mapping[int, Box], max_gap: int) -> dict[int, list[float]]:
    """For each run of at most ``max_gap`` slices between two slices of ``track``, a box
    per slice of the run, interpolated linearly between the two ends' boxes."""
    slices = sorted(track)
    out: dict[int, list[float]] = {}
    for a, b in zip(slices, slices[1:]):
        if not 1 <= b - a - 1 <= max_gap:
            continue
        box_a, box_b = np.asarray(track[a], float), np.asarray(track[b], float)
        for index in range(a + 1, b):
            w = (index - a) / (b - a)
            out[index] = ((1 - w) * box_a + w * box_b).tolist()
    return out


def in_plane_mm(a: Box, b: Box, pixel_mm: Sequence[float]) -> float:
    """Distance in mm, in plane, between the centres of two XYXY boxes; ``pixel_mm`` the
    (row, column) size of a display pixel."""
    return _mm(centre(a) - centre(b), pixel_mm)


def _inside(point: np.ndarray, box: Box) -> bool:
    x0, y0, x1, y1 = box
    return bool(x0 <= point[0] <= x1 and y0 <= point[1] <= y1)


def holds_centre(a: Box, b: Box) -> bool:
    """Whether one box holds the other's centre (a large organ whose cross-section grows
    or shifts between nearby slices still overlaps itself)."""
    return _inside(centre(a), b) or _inside(centre(b), a)


def best_chain(
    candidates: Mapping[int, Sequence[tuple[Box, float]]],
    order: Sequence[int],
    pixel_mm: Sequence[float],
    max_mm: float,
    max_gap: int,
) -> dict[int, int]:
    """The chain of candidates with the most summed score: slice -> the chosen candidate's
    position in ``candidates[slice]``.

    A chain takes at most one candidate per slice, in the order of ``order``; two
    consecutive members lie at most ``max_gap`` positions of ``order`` apart (slices
    between without a member), and their box centres lie at most ``max_mm`` apart in plane
    per position of ``order`` between them, or one box holds the other's centre
    (:func:`holds_centre`).
    Of chains with equal summed scores, the one with the shortest summed in-plane steps
    wins (two regions a recogniser scores alike: the one on the track), then the one found
    first. Written out (a longest path in a small DAG): a few key slices with a few
    candidates each.

    Args:
        candidates: slice -> (XYXY box, score > 0) candidates, best first.
        order: every slice a candidate may be on, ascending along the axis.
        pixel_mm: (row, column) size of a display pixel in mm.
        max_mm: the largest in-plane step, per position of ``order``, between the centres
            of consecutive members whose boxes do not hold each other's centre.
        max_gap: positions of ``order`` a chain may skip between two members.
    """
    nodes = [(j, s, h) for j, s in enumerate(order) for h in range(len(candidates.get(s, ())))]
    # Per node: (summed score, minus the summed in-plane steps) of the best chain ending
    # there, compared in that order.
    total: dict[tuple[int, int, int], tuple[float, float]] = {}
    back: dict[tuple[int, int, int], tuple[int, int, int] | None] = {}
    for node in nodes:
        j, s, h = node
        box, score = candidates[s][h]
        best, before = (0.0, 0.0), None
        for prev in nodes:
            if not j - max_gap - 1 <= prev[0] < j:
                continue
            prev_box = candidates[prev[1]][prev[2]][0]
            step = in_plane_mm(prev_box, box, pixel_mm)
            # An organ drifts in plane with the distance along the axis.
            if step > max_mm * (j - prev[0]) and not holds_centre(prev_box, box):
                continue
            value = (total[prev][0], total[prev][1] - step)
            if before is None or value > best:
                best, before = value, prev
        total[node] = (best[0] + score, best[1])
        back[node] = before
    if not nodes:
        return {}
    first_best = max(range(len(nodes)), key=lambda i: (total[nodes[i]], -i))
    end: tuple[int, int, int] | None = nodes[first_best]
    chain = {}
    while end is not None:
        chain[end[1]] = end[2]
        end = back[end]
    return dict(sorted(chain.items()))
