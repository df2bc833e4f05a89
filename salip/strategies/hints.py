"""Hints as the strategies use them: a target's box and/or points on one display slice,
prompted through the refiner.

:class:`SliceHint` is a :class:`~salip.core.hints.Hint` mapped onto the canonical volume
(:func:`salip.io.orientation.input_to_display`): its slice indexed along the slicing axis of
the canonical volume, its box and points in pixels of that slice's display image. Under the
``volume`` strategy a hinted target's track is seeded by its hints instead of recognition
(:mod:`salip.strategies.volume`); under ``slices`` a hint replaces the target's mask on its
slice (:func:`apply_slice_hints`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from salip.engines.boxes import mask_box, prompt_boxes
from salip.strategies.assembly import put_slice
from salip.strategies.base import StrategyResult
from salip.strategies.embedding_cache import EmbeddingCache
from salip.strategies.volume_view import VolumeView

__all__ = [
    "apply_slice_hints",
    "hint_prompt",
    "hint_record",
    "hinted_organs",
    "refine_hint",
    "seeded_report",
    "SliceHint",
]


@dataclass(frozen=True)
class SliceHint:
    """One target's hint on one slice, in the strategy's coordinates.

    Attributes:
        organ: the target's name.
        index: the slice's index along the slicing axis of the canonical volume (0 for a
            2D image).
        box: XYXY in pixels of the display slice (max corner inclusive), or None.
        points: ``(x, y, positive)`` in pixels of the display slice.
        given: the hint as the user gave it (:meth:`salip.core.hints.Hint.to_json`), for
            the report.
    """

    organ: str
    index: int
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float, bool], ...] = ()
    given: dict[str, Any] = field(default_factory=dict, compare=False)


def hinted_organs(hints: Sequence[SliceHint]) -> set[str]:
    """The names of the targets that have a hint."""
    return {h.organ for h in hints}


def hint_prompt(
    hint: SliceHint, shape: tuple[int, int]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """The refiner's prompt for one hint on an HxW slice: (1x4 box or None, 1xPx2 points
    or None, 1xP int labels or None). The box is used as drawn (no margin): the user drew
    it around the target."""
    boxes = points = labels = None
    if hint.box is not None:
        boxes = prompt_boxes(torch.tensor([hint.box], dtype=torch.float32), 0.0, *shape)
    if hint.points:
        points = torch.tensor([[[x, y] for x, y, _ in hint.points]], dtype=torch.float32)
        labels = torch.tensor([[1 if positive else 0 for *_, positive in hint.points]])
    return boxes, points, labels


def refine_hint(
    refiner: Any, embedding: Any, hint: SliceHint, shape: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """(HxW bool mask, predicted IoU) of the refiner prompted with ``hint``."""
    boxes, points, labels = hint_prompt(hint, shape)
    masks, iou = refiner.refine(embedding, boxes, points, labels)
    return masks[0].cpu().numpy().astype(bool), float(iou[0])


def hint_record(hint: SliceHint, mask: np.ndarray, iou: float) -> dict[str, Any]:
    """A chosen record for the hint's non-empty mask (as the strategies' ``chosen``
    records): ``bbox`` (XYWH of the mask's box), ``from`` "hint", ``refine_iou``, ``hint``."""
    x0, y0, x1, y1 = mask_box(mask)
    return {
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "from": "hint",
        "refine_iou": round(iou, 4),
        "hint": hint.given,
    }


def apply_slice_hints(
    result: StrategyResult,
    view: VolumeView,
    hints: Sequence[SliceHint],
    cache: EmbeddingCache,
    refiner: Any,
) -> list[dict[str, Any]]:
    """The ``slices`` strategy's hints: each replaces its target's mask and records on its
    slice with the refiner's answer to the hint. Returns the report's ``hints`` entries:
    the hint as given, and what it seeded (``slice``, ``pixels``, ``refine_iou``)."""
    out = []
    for hint in hints:
        (embedding,) = cache.get([hint.index])
        mask, iou = refine_hint(refiner, embedding, hint, view.display_shape)
        if view.is_2d:
            result.masks[hint.organ][...] = mask
        else:
            put_slice(result.masks[hint.organ], hint.index, view.axis, mask)
        kept = [r for r in result.chosen[hint.organ] if r["slice"] != hint.index]
        if mask.any():
            kept.append({"slice": hint.index, **hint_record(hint, mask, iou)})
        result.chosen[hint.organ] = kept
        out.append(seeded_report(hint, view, mask, iou))
    return out


def seeded_report(
    hint: SliceHint, view: VolumeView, mask: np.ndarray, iou: float
) -> dict[str, Any]:
    """The report's entry of one hint: the hint as given, and what it ``seeded``: its
    ``slice`` (as in the input file), the mask's ``pixels`` and ``refine_iou``."""
    seeded = {"slice": view.source_index(hint.index), "pixels": int(mask.sum())}
    return {**hint.given, "seeded": {**seeded, "refine_iou": round(iou, 4)}}
