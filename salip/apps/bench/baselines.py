"""Per-slice baselines of the benchmark table, on one slice's SAM embedding.

* :func:`sam_unprompted`: SAM's decoder with no prompt at all (the "unprompted SAM" row of
  the SaLIP paper); of its three masks, the one with the highest predicted IoU.
* :func:`sam_gt_box` (reads the reference): SAM prompted with the tight box of each
  connected component of the reference slice, the paper's upper bound.
* :func:`everything_oracle` (reads the reference): the everything-mode proposal with the
  highest IoU against the reference slice, an upper bound for any crop selector; it
  measures proposal recall.

All masks are HxW bool arrays in the slice's display orientation, like the reference slices
given to them. :class:`Unprompted`, :class:`GtBox` and :class:`Oracle` run them as slice
segmenters under the ``slices`` strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from salip.core.config import SegmentConfig
from salip.core.errors import BenchmarkError
from salip.core.organs import Organ
from salip.engines.area_filter import area_filter
from salip.engines.encoder import SamEncoder
from salip.engines.everything_mode import Proposals, generate_proposals
from salip.engines.refiner import refine_with_boxes
from salip.io.slicing import display_slice
from salip.models.sam_runtime import ImageEmbedding, decode
from salip.strategies.base import SliceOutput

__all__ = [
    "component_boxes",
    "EncodedSlices",
    "everything_oracle",
    "GtBox",
    "Oracle",
    "sam_gt_box",
    "sam_unprompted",
    "Unprompted",
]


def component_boxes(reference: np.ndarray) -> torch.Tensor:
    """Kx4 float XYXY boxes (pixels, max inclusive) of the 8-connected components of an HxW
    bool mask, in scipy's label order (first pixel in row-major order)."""
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


class EncodedSlices:
    """Base of the baselines as slice segmenters (see
    :class:`~salip.strategies.base.SliceSegmenter`): encode the batch once, then one answer
    per slice.

    Args:
        encoder: the SAM encoder (batch, precision, compile).
        config: the settings (slicing axis, proposals, area filter).
        references: organ -> bool reference mask in salip's canonical layout (only the
            baselines that read references need it).
        is_2d: whether the input is a 2D image (one slice, index 0).
        pixel_mm: (row, column) size in mm of a slice's pixels, for the area filter; None
            for a 2D image, whose pixel size is not known.
    """

    def __init__(
        self,
        encoder: SamEncoder,
        config: SegmentConfig,
        references: Mapping[str, np.ndarray] | None = None,
        is_2d: bool = False,
        pixel_mm: tuple[float, float] | None = None,
    ) -> None:
        self.encoder, self.model, self.config = encoder, encoder.sam.model, config
        self.references, self.is_2d, self.pixel_mm = references, is_2d, pixel_mm

    def __call__(
        self, images: Sequence[np.ndarray], organs: Sequence[Organ], indices: Sequence[int]
    ) -> list[SliceOutput]:
        with torch.no_grad():
            embeddings = self.encoder.encode(images)
            return [
                self.segment_slice(emb, index, organs)
                for emb, index in zip(embeddings, indices, strict=True)
            ]

    def reference(self, organ: Organ, index: int) -> np.ndarray:
        """The organ's HxW bool reference slice in display orientation."""
        if self.references is None:
            raise BenchmarkError("this method reads references, but none were given.")
        volume = self.references[organ.name]
        view = display_slice(volume, self.is_2d, self.config.slicing.axis, index)
        return np.ascontiguousarray(view, dtype=bool)

    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        """One slice's answer for every organ."""
        raise NotImplementedError


class Unprompted(EncodedSlices):
    """:func:`sam_unprompted` on every slice, the same mask for every organ."""

    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        mask = sam_unprompted(self.model, embedding)
        return SliceOutput(masks={o.name: mask for o in organs})


class GtBox(EncodedSlices):
    """:func:`sam_gt_box` on every slice (reads the references)."""

    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        return SliceOutput(
            masks={
                o.name: sam_gt_box(self.model, embedding, self.reference(o, index)) for o in organs
            }
        )


class Oracle(EncodedSlices):
    """:func:`everything_oracle` on every slice's area-filtered proposals (reads the
    references)."""

    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        proposals = area_filter(
            generate_proposals(self.model, embedding, self.config.proposals),
            self.config.area,
            self.pixel_mm,
        )
        out = SliceOutput(masks={}, chosen={})
        for organ in organs:
            mask, iou = everything_oracle(proposals, self.reference(organ, index))
            out.masks[organ.name] = mask
            out.chosen[organ.name] = [{"oracle_iou": iou}] if mask.any() else []
        return out
