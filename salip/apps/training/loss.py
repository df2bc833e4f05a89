"""The head's training loss and validation Dice, over partially labelled batches.

A dataset labels only some of the head's classes (the AMOS slices label the liver, not the
spleen that is also visible). Each sample carries a K-long ``labelled`` vector, and every
term of the loss and of the Dice counts is restricted to labelled (image, class) pairs, so
an unlabelled class is neither rewarded nor punished, whatever the head predicts for it.
Only the valid (unpadded) part of SAM's padded frame counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "dice_counts",
    "head_loss",
]


def head_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    labelled: torch.Tensor,
    *,
    smooth: float = 1.0,
) -> torch.Tensor:
    """BCE + soft Dice per (image, class), averaged over the labelled pairs.

    Args:
        logits: BxKxHxW float logits (SAM's padded 1/4 frame).
        targets: BxKxHxW float targets in [0, 1] (area fraction of the class per pixel).
        valid: BxHxW bool, True where the pixel shows the image rather than padding.
        labelled: BxK bool, True where the sample's dataset labels the class.
        smooth: additive smoothing of the soft Dice, in pixels.

    Returns:
        Scalar float loss. With no labelled pair it is 0 (still attached to ``logits``).
        Unlabelled pairs contribute nothing to the value or to any gradient.
    """
    mask = valid[:, None].to(logits.dtype)  # Bx1xHxW
    pixels = mask.sum(dim=(2, 3)).clamp_min(1.0)  # Bx1
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    bce = (bce * mask).sum(dim=(2, 3)) / pixels  # BxK
    probs = torch.sigmoid(logits) * mask
    inter = (probs * targets).sum(dim=(2, 3))
    total = probs.sum(dim=(2, 3)) + (targets * mask).sum(dim=(2, 3))
    dice = 1.0 - (2.0 * inter + smooth) / (total + smooth)  # BxK
    # where(), not a multiplication: selected-out pairs give exactly zero gradient.
    per_pair = torch.where(labelled, bce + dice, torch.zeros_like(bce))
    return per_pair.sum() / labelled.sum().clamp_min(1)


@torch.no_grad()
def dice_counts(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, labelled: torch.Tensor
) -> torch.Tensor:
    """Per-class sums for a Dice over many slices: hard prediction (logit > 0) vs target >= 0.5.

    Args: as :func:`head_loss`.

    Returns:
        3xK float64 tensor: intersection, predicted pixels and reference pixels per class,
        summed over the labelled samples' valid pixels. Dice = 2 * row0 / (row1 + row2).
    """
    keep = (valid[:, None] & labelled[:, :, None, None]).to(torch.float64)
    pred = (logits > 0).to(torch.float64) * keep
    ref = (targets >= 0.5).to(torch.float64) * keep
    return torch.stack(
        [(pred * ref).sum(dim=(0, 2, 3)), pred.sum(dim=(0, 2, 3)), ref.sum(dim=(0, 2, 3))]
    )
