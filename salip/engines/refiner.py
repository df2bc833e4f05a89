"""The Refiner role: an embedded slice with box (and point) prompts in, masks with
predicted IoU out.

:class:`SamRefiner` is SAM's prompt decoder on the kept embedding (no re-encode), one mask
per box (``multimask_output=False``); a prompt of points alone gets SAM's three masks and
keeps the one with the highest predicted IoU, as segment-anything advises for an
ambiguous prompt.
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
        self,
        embedding: ImageEmbedding,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for K prompts: Kx4 float boxes, XYXY in pixels of the slice, and/or
        KxPx2 float points (x, y in pixels) with KxP int labels (1 on the target, 0 not).

        Returns:
            (KxHxW bool masks at the slice's size, K float predicted IoU scores).
        """
        ...


@torch.no_grad()
def refine_with_boxes(
    sam: torch.nn.Module,
    embedding: ImageEmbedding,
    boxes: torch.Tensor | None,
    points: torch.Tensor | None = None,
    point_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final masks for K prompts (Kx4 XYXY pixel boxes and/or KxPx2 points with KxP
    labels, as :meth:`Refiner.refine`), reusing the slice's embedding (no re-encode).

    Returns:
        (KxHxW bool masks at the slice's size, K predicted IoU scores).
    """
    h, w = embedding.original_size
    count = len(boxes) if boxes is not None else len(points) if points is not None else 0
    if count == 0:
        return torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0)
    device = embedding.features.device
    boxes = boxes.to(device) if boxes is not None else None
    points = points.to(device) if points is not None else None
    # Points alone are ambiguous (a part, the organ, the body): take SAM's best of three.
    multimask = boxes is None
    logits, iou = decode(
        sam,
        embedding,
        points=points,
        boxes=boxes,
        multimask_output=multimask,
        point_labels=point_labels,
    )
    best = iou.argmax(dim=1) if multimask else torch.zeros(count, dtype=torch.long)
    rows = torch.arange(count)
    return logits[rows, best] > sam.mask_threshold, iou[rows, best]


class SamRefiner:
    """SAM's box-prompted decoder (see :class:`Refiner`)."""

    def __init__(self, sam: LoadedSam) -> None:
        self.sam = sam

    def refine(
        self,
        embedding: ImageEmbedding,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return refine_with_boxes(self.sam.model, embedding, boxes, points, point_labels)
