"""Crops: each surviving proposal becomes a square RGB image for CLIP.

Crops are padded to a square (black, centred) before CLIP's own resize, so that CLIP's
centre crop cannot cut off an elongated organ.
"""

from __future__ import annotations

import numpy as np

from salip.core.config import CropConfig
from salip.engines.boxes import grow_boxes
from salip.engines.everything_mode import Proposals

__all__ = [
    "CROP_MODES",
    "expand_box",
    "make_crops",
    "pad_to_square",
]

CROP_MODES = ("masked", "box")


def expand_box(
    box: np.ndarray, margin: float, height: int, width: int
) -> tuple[int, int, int, int]:
    """Grow an XYXY box (max corner inclusive) by ``margin`` (:func:`salip.engines.boxes.grow_boxes`)
    and clip it to the image.

    Returns integer (x0, y0, x1, y1) with exclusive x1, y1, ready for slicing.
    """
    x0, y0, x1, y1 = grow_boxes(np.asarray(box, dtype=np.float64), margin).tolist()
    return (
        max(0, int(np.floor(x0))),
        max(0, int(np.floor(y0))),
        min(width, int(np.ceil(x1 + 1))),
        min(height, int(np.ceil(y1 + 1))),
    )


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad an HxWx3 image with black to SxSx3 (S = max(H, W)), content centred."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side, image.shape[2]), dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = image
    return out


def make_crops(image: np.ndarray, proposals: Proposals, config: CropConfig) -> list[np.ndarray]:
    """One square HxWx3 uint8 crop per proposal.

    Args:
        image: HxWx3 uint8 RGB slice.
        proposals: the slice's proposals (masks NxHxW bool, boxes XYXY pixels).
        config: ``crop_mode`` "masked" (pixels outside the mask set to 0, then cropped to
            the box grown by ``crop_margin``) or "box" (the image inside the grown box).
    """
    if config.crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {config.crop_mode!r}")
    h, w = image.shape[:2]
    masks = proposals.masks.cpu().numpy()
    boxes = proposals.boxes.cpu().numpy()
    crops = []
    for mask, box in zip(masks, boxes):
        x0, y0, x1, y1 = expand_box(box, config.crop_margin, h, w)
        region = image[y0:y1, x0:x1]
        if config.crop_mode == "masked":
            region = region * mask[y0:y1, x0:x1, None].astype(np.uint8)
        crops.append(pad_to_square(np.ascontiguousarray(region)))
    return crops
