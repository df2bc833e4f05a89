"""Per-slice baselines of the benchmark table, on one slice's SAM embedding.

* :func:`sam_unprompted`: SAM's decoder with no prompt at all (the "unprompted SAM" row of
  the SaLIP paper); of its three masks, the one with the highest predicted IoU.
* :func:`sam_gt_box` (reads the reference): SAM prompted with the tight box of each
  connected component of the reference slice, the paper's upper bound.
* :func:`everything_oracle` (reads the reference): the everything-mode proposal with the
  highest IoU against the reference slice, an upper bound for any crop selector; it
  measures proposal recall.

All masks are HxW bool arrays in the slice's display orientation, like the reference slices
given to them.
"""

from __future__ import annotations

import numpy as np
import torch

from salip.engines.proposals import Proposals
from salip.engines.refine import refine_with_boxes
from salip.models.sam_runtime import ImageEmbedding, decode


def component_boxes(reference: np.ndarray) -> torch.Tensor:
    """Kx4 float XYXY boxes (pixels, max inclusive) of the 8-connected components of an HxW
    bool mask, in scipy's label order (first pixel in row-major order)."""
    from scipy import ndimage

    labels, _ = ndimage.label(reference, structure=np.ones((3, 3), dtype=bool))
    boxes = [
        [float(cols.start), float(rows.start), float(cols.stop - 1), float(rows.stop - 1)]
        for rows, cols in ndimage.find_objects(labels)
    ]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


@torch.no_grad()
def sam_gt_box(
    sam: torch.nn.Module, embedding: ImageEmbedding, reference: np.ndarray
) -> np.ndarray:
    """Union of SAM's single-mask answers to the box of each reference component (HxW bool).

    An empty reference slice gives an empty mask (no prompt, nothing predicted).
    """
    boxes = component_boxes(reference)
    h, w = embedding.original_size
    if len(boxes) == 0:
        return np.zeros((h, w), dtype=bool)
    masks, _ = refine_with_boxes(sam, embedding, boxes)
    return masks.any(0).cpu().numpy()


@torch.no_grad()
def sam_unprompted(sam: torch.nn.Module, embedding: ImageEmbedding) -> np.ndarray:
    """SAM's decoder with no prompt: the best of its three masks by predicted IoU (HxW bool)."""
    logits, iou = decode(sam, embedding, multimask_output=True)
    best = int(torch.argmax(iou[0]))
    return (logits[0, best] > sam.mask_threshold).cpu().numpy()


def everything_oracle(proposals: Proposals, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """The proposal that best matches the reference slice, and its IoU.

    Args:
        proposals: everything-mode proposals of the slice (NxHxW masks).
        reference: HxW bool reference slice.

    Returns:
        (HxW bool mask, IoU in [0, 1]); an empty mask and 0.0 when the reference or the
        proposals are empty.
    """
    h, w = reference.shape
    if len(proposals) == 0 or not reference.any():
        return np.zeros((h, w), dtype=bool), 0.0
    masks = proposals.masks.cpu().flatten(1)
    ref = torch.as_tensor(reference, dtype=torch.bool).flatten()[None]
    inter = (masks & ref).sum(1).float()
    union = (masks | ref).sum(1).float()
    iou = inter / union.clamp(min=1)
    best = int(torch.argmax(iou))  # ties: the first, i.e. the higher-ranked proposal
    return proposals.masks[best].cpu().numpy(), float(iou[best])
