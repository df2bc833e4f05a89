"""Stage 6, refinement: box prompts run through SAM's decoder on the kept embedding."""

from __future__ import annotations

import torch

from salip.models.sam_runtime import ImageEmbedding, decode


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
