"""Stage 5b, boxes: selected proposals become SAM box prompts."""

from __future__ import annotations

import torch


def prompt_boxes(boxes: torch.Tensor, margin: float, height: int, width: int) -> torch.Tensor:
    """Grow Kx4 XYXY pixel boxes by ``margin`` x their size per side, clipped to the slice.

    Args:
        boxes: Kx4 float XYXY in pixels of the slice (max inclusive, as from
            ``batched_mask_to_box``).
        margin: fraction of the box's width/height added on each side (0: unchanged).
        height, width: slice size.

    Returns:
        Kx4 float XYXY boxes in pixels of the slice, as SAM's box prompt expects.
    """
    from torchvision.ops.boxes import clip_boxes_to_image

    boxes = boxes.float()
    if margin > 0:
        size = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1).repeat(
            1, 2
        )
        boxes = boxes + size * margin * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device)
    return clip_boxes_to_image(boxes, (height, width))
