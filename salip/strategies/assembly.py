"""Assembly: slice masks back into a canonical volume."""

from __future__ import annotations

from typing import Any

import numpy as np

from salip.io.slicing import AXES, from_display

__all__ = [
    "OVERLAP_RULE",
    "empty_volume_mask",
    "keep_largest_components",
    "overlaps",
    "put_slice",
    "to_label_map",
]


def empty_volume_mask(shape: tuple[int, ...]) -> np.ndarray:
    """A bool mask of ``shape`` (canonical volume, or HxW for a 2D image)."""
    return np.zeros(shape, dtype=bool)


def put_slice(volume_mask: np.ndarray, index: int, axis: str, display_mask: np.ndarray) -> None:
    """Write one display-orientation HxW bool slice mask into an XxYxZ canonical mask."""
    canonical = from_display(display_mask)
    slicer = [slice(None)] * 3
    slicer[AXES[axis]] = index
    volume_mask[tuple(slicer)] = canonical


def keep_largest_components(mask: np.ndarray, n: int) -> np.ndarray:
    """Keep the ``n`` largest connected components of a bool mask (full connectivity).

    Components are numbered in raster order (as skimage.measure.label numbers them), so
    equal sizes are broken the same way on every run.
    """
    from scipy import ndimage

    full = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    labels, count = ndimage.label(mask, structure=full)
    if count <= n:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = np.argsort(sizes, kind="stable")[::-1][:n]
    return np.isin(labels, keep)


def to_label_map(masks: dict[str, np.ndarray], order: list[str]) -> np.ndarray:
    """Combine per-organ bool masks into a uint8 label map (value i+1 for ``order[i]``).

    Where organs overlap, the organ listed first wins.
    """
    first = masks[order[0]]
    labels = np.zeros(first.shape, dtype=np.uint8)
    for value, name in reversed(list(enumerate(order, start=1))):
        labels[masks[name]] = value
    return labels


#: How :func:`to_label_map` resolves overlaps, as the report states it.
OVERLAP_RULE = (
    "where organs overlap, the label map gives each voxel to the organ listed first; "
    "per-organ files (--split) keep every organ whole"
)


def overlaps(masks: dict[str, np.ndarray], order: list[str]) -> list[dict[str, Any]]:
    """The voxels two organs both claim, each pair once (in ``order``), with the organ that
    keeps them in :func:`to_label_map`'s label map (the one listed first)."""
    pairs = []
    for i, first in enumerate(order):
        for second in order[i + 1 :]:
            count = int(np.count_nonzero(masks[first] & masks[second]))
            if count:
                pairs.append({"organs": [first, second], "voxels": count, "kept_by": first})
    return pairs
