"""What a viewer shows (:class:`ViewerData`), its limits and presets, and the display
stack of a canonical array."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from salip.core.errors import OutputError
from salip.io.slicing import display_slice

__all__ = [
    "CT_RANGE",
    "CT_WINDOWS",
    "MAX_BYTES",
    "MIN_LEVELS",
    "MODALITIES",
    "STEP_FACTORS",
    "display_stack",
    "ViewerData",
]

#: Default size limit of a viewer file in bytes (25 MB).
MAX_BYTES = 25_000_000

#: CT intensities are clipped to this HU range (12 bits) before encoding.
CT_RANGE = (-1024.0, 3071.0)

#: CT window presets: (id, label, width HU, level HU). "auto" (full range) is added.
CT_WINDOWS = (
    ("soft", "Soft tissue", 400.0, 40.0),
    ("liver", "Liver", 150.0, 30.0),
    ("lung", "Lung", 1500.0, -600.0),
    ("bone", "Bone", 1800.0, 400.0),
    ("brain", "Brain", 80.0, 40.0),
)

#: Multiples of the base step tried, finest first, until the file fits ``max_bytes``.
STEP_FACTORS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024)

#: Fewest grey levels over the data's range a step may leave (coarser ones are not tried).
MIN_LEVELS = 64

MODALITIES = ("ct", "mr", "xray", "us")


@dataclass(frozen=True)
class ViewerData:
    """Everything the viewer shows, in display orientation.

    image: NxHxW array of the input's intensities (float32; HU for CT), N display slices
        (N = 1 for a 2D image), each HxW as displayed (row 0 at the top).
    labels: NxHxW uint8 label map, same layout; 0 = background, value v = organs[v-1].
    organs: tuple of (name, label value, (r, g, b)) in label order.
    slice_numbers: the input file's slice index of each display slice (length N), shown to
        the user.
    pixel_spacing: (row_mm, col_mm) of a display pixel, for the aspect ratio ((1,1) for 2D
        images).
    modality: "ct", "mr", "xray", "us" or None; CT gets window presets.
    boxes: per display slice index -> list of dicts {"organ", "bbox": [x, y, w, h] in display
        pixels (segment-anything's XYWH: the box covers columns x..x+w and rows y..y+h),
        "probability" (float or None), "margin" (float or None), "clip_score" (float or
        None), "side" (str or None), "competitors": {class name: probability} (may be
        empty), "hint" (bool, optional: the box is the mask of a user's hint; drawn dashed,
        and its slice is marked)}.
    profiles: organ name -> list (one per side) of dicts {"side": str|None,
        "profile": [[display slice, score], ...], "extent": [first, last] display slices or
        None, "seeds": [display slices], "stops": [{"seed": slice, "direction": +1/-1,
        "stopped_at": slice, "reason": str}]}; empty for the slices strategy.
    title: a line shown at the top (input name, organs).
    orientation: the patient's direction at the (top, bottom, left, right) edge of a display
        slice, e.g. ("A", "P", "R", "L") for axial slices; None for 2D images.
    answers: organ name -> {"confidence": float in [0, 1] or None, "found": bool,
        "reason": str or None}, the run's answer shown in the organ's legend entry (its
        confidence, or "not found" and why); None or a missing organ: nothing shown.
    """

    image: np.ndarray
    labels: np.ndarray
    organs: tuple[tuple[str, int, tuple[int, int, int]], ...]
    slice_numbers: tuple[int, ...]
    pixel_spacing: tuple[float, float] = (1.0, 1.0)
    modality: str | None = None
    boxes: dict[int, list[dict[str, Any]]] | None = None
    profiles: dict[str, list[dict[str, Any]]] | None = None
    title: str = ""
    orientation: tuple[str, str, str, str] | None = None
    answers: dict[str, dict[str, Any]] | None = None


def display_stack(array: np.ndarray, is_2d: bool, axis: str = "axial") -> np.ndarray:
    """A canonical array as its stack of display slices (the layout :class:`ViewerData` takes).

    Args:
        array: XxYxZ canonical volume or label map (as ``Volume.data``), or for a 2D image
            HxW or HxWxC (C = 1, or 3/4: grey if the colour channels agree, else their
            luma).
        is_2d: whether ``array`` is a 2D image.
        axis: "axial", "coronal" or "sagittal" (ignored for 2D images).

    Returns:
        NxHxW array in the radiological display orientation of
        :func:`salip.io.slicing.display_slice`, slice k being canonical index k along
        ``axis``; 1xHxW for a 2D image. Same dtype, except that colour images become float32.
    """
    if is_2d:
        image = np.asarray(array)
        if image.ndim == 3 and (image.shape[2] == 1 or (image[..., 1:3] == image[..., :1]).all()):
            image = image[..., 0]  # grey, perhaps stored as RGB
        elif image.ndim == 3:
            luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
            image = image[..., :3].astype(np.float32) @ luma
        return image[None]
    from salip.io.orientation import AXES

    if axis not in AXES:
        raise OutputError(f"viewer: unknown axis {axis!r}; use one of {', '.join(AXES)}.")
    count = array.shape[AXES[axis]]
    return np.stack([display_slice(array, False, axis, k) for k in range(count)])
