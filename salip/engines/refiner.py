"""The Refiner role: an embedded slice with box prompts in, masks with predicted IoU out.

:class:`SamRefiner` is SAM's prompt decoder on the kept embedding (no re-encode), one mask
per box (``multimask_output=False``).
"""

from __future__ import annotations

from typing import Protocol

import torch

from salip.models.sam import LoadedSam
from salip.models.sam_runtime import ImageEmbedding, decode

__all__ = [
    "refine_with_boxes",
    "Refiner",
    "SamRefiner",
]


class Refiner(Protocol):
    """Turns box prompts on an embedded slice into masks."""

    def refine(
        self, embedding: ImageEmbedding, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for Kx4 float boxes, XYXY in pixels of the slice.

        Returns:
            (KxHxW bool masks at the slice's size, K float predicted IoU scores).
        """
        ...


@torch.no_grad()
def refine_with_boxes(
    sam: torch.nn.Module, embedding: ImageEmbedding, boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final masks for Kx4 XYXY pixel boxes, reusing the slice's embedding (no re-encode).

    Returns:
        (KxHxW bool masks at the slice's size, K predicted IoU scores).
    """
    h, w = embedding.original_size
    if boxes.numel() == 0:
        return torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0)
    boxes = boxes.to(embedding.features.device)
    logits, iou = decode(sam, embedding, boxes=boxes, multimask_output=False)
    return logits[:, 0] > sam.mask_threshold, iou[:, 0]


class SamRefiner:
    """SAM's box-prompted decoder (see :class:`Refiner`)."""

    def __init__(self, sam: LoadedSam) -> None:
        self.sam = sam

    def refine(
        self, embedding: ImageEmbedding, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return refine_with_boxes(self.sam.model, embedding, boxes)
