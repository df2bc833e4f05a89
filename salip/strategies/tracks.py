"""An organ's track along the slicing axis: one box per slice it was found on, picks that
stray from it, and boxes for the slices between.

Boxes are XYXY in pixels of the display slices (max corner inclusive); slices are indices
along the slicing axis of the canonical volume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

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
    scale = np.array(pixel_mm[::-1], dtype=float)  # (x, y) = (column, row)
    worst: tuple[int, float] | None = None
    for j, k in enumerate(slices):
        neighbours = [n for n in slices[max(0, j - 1) : j + 2] if n != k]
        if not neighbours:
            continue
        offset = (centre(track[k]) - expected_centre(track, neighbours, k)) * scale
        distance = float(np.hypot(*offset))
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
