"""Boxes: selected proposals become SAM box prompts."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = [
    "grow_boxes",
    "mask_box",
    "prompt_boxes",
]

Boxes = TypeVar("Boxes", np.ndarray, torch.Tensor)


def grow_boxes(boxes: Boxes, margin: float) -> Boxes:
    """Grow XYXY boxes by ``margin`` x their size on every side, unclipped.

    The one box convention of salip: XYXY in pixels of the slice with the max corner
    inclusive, as ``batched_mask_to_box`` gives it, so a box from x0 to x1 is
    ``x1 - x0 + 1`` pixels wide and that is the size the margin scales.

    Args:
        boxes: float Kx4 (or 4) XYXY, numpy or torch.
        margin: fraction of the box's width/height added on each side (0: unchanged).

    Returns:
        Boxes of the same type and shape, XYXY with the max corner inclusive.
    """
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    dx, dy = (x1 - x0 + 1) * margin, (y1 - y0 + 1) * margin
    stack = torch.stack if isinstance(boxes, torch.Tensor) else np.stack
    return stack([x0 - dx, y0 - dy, x1 + dx, y1 + dy], -1)


def mask_box(mask: np.ndarray) -> list[int]:
    """XYXY (max inclusive) pixel box of a non-empty HxW bool mask."""
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def prompt_boxes(boxes: torch.Tensor, margin: float, height: int, width: int) -> torch.Tensor:
    """Grow Kx4 XYXY pixel boxes by ``margin`` x their size per side, clipped to the slice.

    Args:
        boxes: Kx4 float XYXY in pixels of the slice (max inclusive, as from
            ``batched_mask_to_box``).
        margin: fraction of the box's width/height added on each side (0: unchanged),
            as :func:`grow_boxes` counts it.
        height, width: slice size.

    Returns:
        Kx4 float XYXY boxes in pixels of the slice, as SAM's box prompt expects.
    """
    from torchvision.ops.boxes import clip_boxes_to_image

    boxes = boxes.float()
    if margin > 0:
        boxes = grow_boxes(boxes, margin)
    return clip_boxes_to_image(boxes, (height, width))
