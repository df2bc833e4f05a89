"""The SaLIP cascade on a batch of embedded slices, composed from engines:
proposals -> area filter -> recognition (crops + CLIP) -> top-k boxes -> refinement."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from salip.core.config import ProposalConfig, SegmentConfig
from salip.core.organs import Organ
from salip.core.timing import StageTimer
from salip.engines.area_filter import area_filter
from salip.engines.boxes import prompt_boxes
from salip.engines.encoder import Encoder
from salip.engines.everything_mode import Proposals, grid_points
from salip.engines.proposer import Proposer
from salip.engines.recogniser import Recogniser
from salip.engines.refiner import Refiner
from salip.models.sam_runtime import ImageEmbedding
from salip.strategies.base import SliceOutput
from salip.strategies.volume_view import VolumeView

__all__ = [
    "point_prompts",
    "prompt_regions",
    "cascade_batch",
    "Engines",
    "region_box",
    "region_members",
    "slice_regions",
]


@dataclass
class Engines:
    """The engines a cascade composes (see :mod:`salip.engines`)."""

    encoder: Encoder
    proposer: Proposer
    recogniser: Recogniser
    refiner: Refiner


def cascade_batch(
    engines: Engines,
    config: SegmentConfig,
    images: Sequence[np.ndarray],
    embeddings: Sequence[ImageEmbedding],
    organs: Sequence[Organ],
    timer: StageTimer,
    indices: Sequence[int] | None = None,
    every_region: bool = False,
    pixel_mm: tuple[float, float] | None = None,
    regions: Sequence[np.ndarray | None] | None = None,
) -> list[SliceOutput]:
    """Segment ``organs`` in a batch of slices, each slice decided on its own.

    Args:
        engines: proposer, recogniser and refiner (the encoder already ran).
        config: area filter and box margin settings.
        images: HxWx3 uint8 display images.
        embeddings: their embeddings, in the same order.
        organs: the targets.
        timer: adds "proposals" and "refine" (the recogniser adds its own stages).
        indices: the slices' indices along the axis (for engines that need them).
        every_region: prompt every accepted region, not only the picked ones (see
            :func:`slice_regions`); for volumes, whose pieces are then weighed in 3D.
        pixel_mm: (row, column) size in mm of the slices' pixels, for the area filter's
            speck floor; None for a 2D image (see :func:`~salip.engines.area_filter.speck_pixels`).
        regions: per slice, where everything mode may seed parts (HxW bool, or None for the
            whole slice; :meth:`~salip.strategies.volume_view.VolumeView.prompt_region`).

    Each region (:func:`slice_regions`) is prompted with one box: a proposal and every
    accepted proposal of the organ (on its side, for a pair) that overlaps or touches it,
    directly or through others (:func:`region_members`), so an organ that SAM split into
    pieces, or that lies in several touching parts, is prompted whole.

    Returns:
        One :class:`SliceOutput` per image: HxW bool masks and the records of the
        proposals used (``bbox`` XYWH in pixels of the slice; ``parts`` the proposals of
        its region).
    """
    t = time.perf_counter()
    # Point prompts of the whole batch are decoded together, across slices.
    per_slice = [
        area_filter(p, config.area, pixel_mm) for p in engines.proposer.propose(embeddings, regions)
    ]
    timer.add("proposals", t)
    found = engines.recogniser.recognise(images, per_slice, organs, indices)
    t = time.perf_counter()
    outputs = []
    for props, emb, recognition in zip(per_slice, embeddings, found, strict=True):
        h, w = emb.original_size
        out = SliceOutput(masks={}, chosen={})
        for organ in organs:
            mask, records = np.zeros((h, w), dtype=bool), []
            regions = slice_regions(props, recognition, organ.name, every_region)
            if regions:
                scores = recognition.scores[organ.name]
                region_boxes = torch.stack([region_box(props, r) for r in regions])
                boxes = prompt_boxes(region_boxes, config.refine.box_margin, h, w)
                refined, iou = engines.refiner.refine(emb, boxes)
                mask = refined.any(0).cpu().numpy()
                records = [
                    _record(box.tolist(), scores, r[0], props, r, float(q))
                    for box, r, q in zip(region_boxes, regions, iou, strict=True)
                ]
            out.masks[organ.name], out.chosen[organ.name] = mask, records
        outputs.append(out)
    timer.add("refine", t)
    return outputs


def slice_regions(
    props: Proposals, recognition: Any, name: str, every_region: bool
) -> list[list[int]]:
    """The regions of organ ``name`` on one slice, each a list of proposals, best first.

    With contrast scoring, the picked proposals' regions (:func:`region_members`), or with
    ``every_region`` the regions of every accepted proposal: an organ in several parts
    apart in the slice (a pancreas, a liver whose lobe tip shows apart) keeps them all,
    and a stray region is left for the 3D evidence to weigh. With the paper's scoring every
    crop counts as accepted, so the top-k picks alone, each on its own.
    """
    scores = recognition.scores.get(name, {})
    picked = recognition.picked.get(name, [])
    if "probability" not in scores:
        return [[p] for p in picked]
    accepted = recognition.accepted.get(name, [])
    if not every_region:
        return [region_members(props, p, accepted, scores) for p in picked]
    regions: list[list[int]] = []
    seen: set[int] = set()
    for best in accepted:  # best first
        if best not in seen:
            members = region_members(props, best, [a for a in accepted if a not in seen], scores)
            seen.update(members)
            regions.append(members)
    return regions


def region_members(
    props: Proposals, best: int, accepted: Sequence[int], scores: dict[str, list[Any]]
) -> list[int]:
    """``best`` and every accepted proposal that overlaps or touches it, directly or
    through others (8-connected union of their masks); for a pair (``scores`` has
    ``side``), only those on ``best``'s side. ``best`` first."""
    sides = scores.get("side")
    members = [best] + [
        i for i in accepted if i != best and (sides is None or sides[i] == sides[best])
    ]
    if len(members) == 1:
        return members
    masks = props.masks[torch.as_tensor(members, dtype=torch.long)].cpu().numpy()
    labels, _ = ndimage.label(masks.any(0), structure=np.ones((3, 3), dtype=bool))
    region = set(np.unique(labels[masks[0]]).tolist()) - {0}
    return [m for k, m in enumerate(members) if region & set(np.unique(labels[masks[k]]))]


def region_box(props: Proposals, members: Sequence[int]) -> torch.Tensor:
    """The XYXY box (float32, pixels of the slice) holding the ``members``' boxes."""
    boxes = props.boxes[torch.as_tensor(list(members), dtype=torch.long)].cpu().float()
    return torch.cat([boxes[:, :2].min(0).values, boxes[:, 2:].max(0).values])


def _record(
    box: list[float],
    scores: dict[str, list[Any]],
    index: int,
    props: Proposals,
    members: Sequence[int],
    refine_iou: float,
) -> dict[str, Any]:
    """The report record of one used proposal and its region (``bbox`` XYWH of the
    region's XYXY box; ``area`` the proposal's pixels)."""
    x0, y0, x1, y1 = box
    return {
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        **{key: values[index] for key, values in scores.items()},
        "area": int(props.masks[index].sum()),
        "parts": len(members),
        "refine_iou": refine_iou,
    }


def prompt_regions(
    view: VolumeView, indices: Sequence[int], proposals: ProposalConfig
) -> list[np.ndarray | None]:
    """Per slice of ``indices``, where everything mode seeds parts
    (:meth:`~salip.strategies.volume_view.VolumeView.prompt_region`); all None with
    ``full_grid`` (the reference generator's whole grid)."""
    if proposals.full_grid:
        return [None] * len(indices)
    return [view.prompt_region(i) for i in indices]


def point_prompts(
    proposals: ProposalConfig, regions: Sequence[np.ndarray | None], size: tuple[int, int]
) -> int:
    """How many point prompts everything mode decodes on slices of ``size`` (H, W) with
    these ``regions`` (:func:`~salip.engines.everything_mode.grid_points`)."""
    return sum(len(grid_points(proposals.points_per_side, size, r)) for r in regions)
