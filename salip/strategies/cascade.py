"""The SaLIP cascade on a batch of embedded slices, composed from engines:
proposals -> area filter -> recognition (crops + CLIP) -> top-k boxes -> refinement."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from salip.core.config import SegmentConfig
from salip.core.organs import Organ
from salip.core.timing import StageTimer
from salip.engines.area_filter import area_filter
from salip.engines.boxes import prompt_boxes
from salip.engines.encoder import Encoder
from salip.engines.proposer import Proposer
from salip.engines.recogniser import Recogniser
from salip.engines.refiner import Refiner
from salip.models.sam_runtime import ImageEmbedding
from salip.strategies.base import SliceOutput


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

    Returns:
        One :class:`SliceOutput` per image: HxW bool masks and the records of the
        proposals used (``bbox`` XYWH in pixels of the slice).
    """
    t = time.perf_counter()
    # Point prompts of the whole batch are decoded together, across slices.
    per_slice = [area_filter(p, config.area) for p in engines.proposer.propose(embeddings)]
    timer.add("proposals", t)
    found = engines.recogniser.recognise(images, per_slice, organs, indices)
    t = time.perf_counter()
    outputs = []
    for props, emb, recognition in zip(per_slice, embeddings, found, strict=True):
        h, w = emb.original_size
        out = SliceOutput(masks={}, chosen={})
        for organ in organs:
            picked = recognition.picked.get(organ.name, [])
            mask, records = np.zeros((h, w), dtype=bool), []
            if picked:
                idx = torch.as_tensor(picked, dtype=torch.long)
                boxes = prompt_boxes(
                    props.boxes[idx.to(props.boxes.device)], config.refine.box_margin, h, w
                )
                refined, iou = engines.refiner.refine(emb, boxes)
                mask = refined.any(0).cpu().numpy()
                scores = recognition.scores[organ.name]
                areas = props.masks[idx.to(props.masks.device)].flatten(1).sum(1).tolist()
                records = [
                    _record(props.boxes[p].tolist(), scores, p, int(areas[j]), float(iou[j]))
                    for j, p in enumerate(picked)
                ]
            out.masks[organ.name], out.chosen[organ.name] = mask, records
        outputs.append(out)
    timer.add("refine", t)
    return outputs


def _record(
    box: list[float], scores: dict[str, list[Any]], index: int, area: int, refine_iou: float
) -> dict[str, Any]:
    """The report record of one used proposal (``bbox`` XYWH from an XYXY box)."""
    x0, y0, x1, y1 = box
    return {
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        **{key: values[index] for key, values in scores.items()},
        "area": area,
        "refine_iou": refine_iou,
    }
