"""The SaLIP cascade on a batch of slices: proposals -> area filter -> crops -> CLIP scores
-> top-k boxes -> SAM refinement. Stages live in their own modules; this one wires them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from salip.area_filter import area_filter
from salip.boxes import prompt_boxes
from salip.config import SegmentConfig
from salip.crops import make_crops
from salip.models.clip import LoadedClip
from salip.models.sam import LoadedSam
from salip.models.sam_runtime import encode_images
from salip.organs import Organ
from salip.prompts import PromptSet
from salip.proposals import generate_proposals
from salip.refine import refine_with_boxes
from salip.scoring import ClipScorer, cosine_scores, select_top_k


@dataclass
class SliceOutput:
    """What a slice segmenter returns for one slice.

    Attributes:
        masks: organ name -> HxW bool mask in the slice's display orientation.
        chosen: organ name -> records of the proposals used (for the report): ``bbox``
            (XYWH pixels of the slice), ``clip_score``, ``area`` (pixels), ``refine_iou``.
    """

    masks: dict[str, np.ndarray]
    chosen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class SliceSegmenter(Protocol):
    """Anything that turns a batch of HxWx3 uint8 RGB slices into per-organ masks.

    :func:`salip.segment` accepts one through its ``segmenter`` argument; the default is
    :class:`Cascade`. Returning plain ``{organ: mask}`` dicts is also accepted.
    """

    def __call__(
        self, images: Sequence[np.ndarray], organs: Sequence[Organ]
    ) -> Sequence[SliceOutput | dict[str, np.ndarray]]: ...


class StageTimer:
    """Accumulates wall-clock seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, stage: str, start: float) -> float:
        """Add ``now - start`` to ``stage``; return now."""
        now = time.perf_counter()
        self.seconds[stage] += now - start
        return now


class Cascade:
    """The SaLIP cascade with loaded models, prompts and settings."""

    def __init__(
        self,
        sam: LoadedSam,
        clip: LoadedClip,
        prompts: dict[str, PromptSet],
        config: SegmentConfig,
        device: str,
        timer: StageTimer | None = None,
    ) -> None:
        self.sam = sam
        self.scorer = ClipScorer(clip, device)
        self.prompts = prompts
        self.config = config
        self.timer = timer or StageTimer()
        # Text embeddings once per run, not per slice.
        start = time.perf_counter()
        self.text = {
            name: self.scorer.text_embedding(p.descriptions) for name, p in prompts.items()
        }
        self.timer.add("clip_text", start)

    def top_k(self, organ: Organ) -> int:
        """Crops kept per slice for ``organ``: the configured value or the organ's own."""
        return self.config.scoring.top_k or organ.top_k

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray], organs: Sequence[Organ]) -> list[SliceOutput]:
        cfg, timer, model = self.config, self.timer, self.sam.model
        t = time.perf_counter()
        embeddings = encode_images(model, images, cfg.proposals.encoder_batch_size)
        t = timer.add("sam_encoder", t)
        per_slice, crops, owner = [], [], []
        for i, (image, emb) in enumerate(zip(images, embeddings)):
            props = area_filter(generate_proposals(model, emb, cfg.proposals), cfg.area)
            t = timer.add("proposals", t)
            slice_crops = make_crops(image, props, cfg.crops)
            crops.extend(slice_crops)
            owner.extend([i] * len(slice_crops))
            per_slice.append(props)
            t = timer.add("crops", t)
        crop_emb = self.scorer.image_embeddings(crops)
        t = timer.add("clip_image", t)
        owner_t = torch.as_tensor(owner, dtype=torch.long)
        outputs = []
        for i, (props, emb) in enumerate(zip(per_slice, embeddings)):
            h, w = emb.original_size
            rows = torch.nonzero(owner_t == i).flatten()
            out = SliceOutput(masks={}, chosen={})
            for organ in organs:
                mask = np.zeros((h, w), dtype=bool)
                records: list[dict[str, Any]] = []
                if len(rows):
                    scores = cosine_scores(
                        crop_emb[rows.to(crop_emb.device)], self.text[organ.name]
                    )
                    picked = select_top_k(scores, self.top_k(organ), cfg.scoring.min_score)
                    if picked:
                        idx = torch.as_tensor(picked, dtype=torch.long)
                        boxes = prompt_boxes(
                            props.boxes[idx.to(props.boxes.device)], cfg.refine.box_margin, h, w
                        )
                        refined, iou = refine_with_boxes(model, emb, boxes)
                        mask = refined.any(0).cpu().numpy()
                        for j, p in enumerate(picked):
                            x0, y0, x1, y1 = props.boxes[p].tolist()
                            records.append(
                                {
                                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    "clip_score": float(scores[p]),
                                    "area": int(props.areas[p]),
                                    "refine_iou": float(iou[j]),
                                }
                            )
                out.masks[organ.name] = mask
                out.chosen[organ.name] = records
            outputs.append(out)
            t = timer.add("refine", t)
        return outputs
