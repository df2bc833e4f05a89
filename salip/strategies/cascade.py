"""The SaLIP cascade on a batch of slices: proposals -> area filter -> crops -> CLIP scores
-> top-k boxes -> SAM refinement. Stages live in their own modules; this one wires them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from salip.core.config import SegmentConfig
from salip.core.organs import Organ, get_organ
from salip.core.prompts import PromptSet
from salip.engines.area_filter import area_filter
from salip.engines.boxes import prompt_boxes
from salip.engines.crops import make_crops
from salip.engines.laterality import IN_PLANE_AXES, body_midline, patient_sides
from salip.engines.proposals import decoder_batch, generate_proposals_batch
from salip.engines.refine import refine_with_boxes
from salip.engines.scoring import ClipScorer, contrast_scores, cosine_scores, select_top_k
from salip.models.clip import LoadedClip
from salip.models.precision import resolve_precision
from salip.models.sam import LoadedSam
from salip.models.sam_runtime import (
    BatchSize,
    encode_images,
    fast_encoder,
    resize_for_encoder,
)

#: Auto batch sizes (``encoder_batch_size = 0``): slices per batch on CPU, and the cap on
#: CUDA, where the encoder batch is measured against free memory.
AUTO_SLICES_CPU = 4
AUTO_SLICES_CUDA = 32


def encoder_batch(setting: int, device: str) -> BatchSize:
    """Slices per SAM encoder call for ``encoder_batch_size = setting`` (0: auto)."""
    return BatchSize.from_setting(
        setting, device, default=AUTO_SLICES_CPU, probe=1, cap=AUTO_SLICES_CUDA
    )


def slice_batch(setting: int, device: str) -> int:
    """Slices per segmenter call for ``encoder_batch_size = setting`` (0: auto)."""
    if setting:
        return setting
    return AUTO_SLICES_CUDA if torch.device(device).type == "cuda" else AUTO_SLICES_CPU


@dataclass
class SliceOutput:
    """What a slice segmenter returns for one slice.

    Attributes:
        masks: organ name -> HxW bool mask in the slice's display orientation.
        chosen: organ name -> records of the proposals used (for the report): ``bbox``
            (XYWH pixels of the slice), ``clip_score`` (cosine with the organ),
            ``probability`` and ``margin`` (contrast scoring), ``side`` (patient side, with
            laterality), ``area`` (pixels), ``refine_iou``.
    """

    masks: dict[str, np.ndarray]
    chosen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class SliceSegmenter(Protocol):
    """Anything that turns a batch of HxWx3 uint8 RGB slices into per-organ masks.

    :func:`salip.segment` accepts one through its ``segmenter`` argument; the default is
    :class:`Cascade`. It is called with the batch's display images, the organs, and the
    slices' indices along the slicing axis of the canonical volume (0 for a 2D image), in
    slice order. Returning plain ``{organ: mask}`` dicts is also accepted. An optional
    ``slice_batch`` attribute (int) sets how many slices a call gets when the
    ``encoder_batch_size`` setting is 0 (auto); otherwise 4. An optional ``prepare(images)``
    method is run in a background thread one batch ahead, and its result passed to the call
    as ``prepared=``. An optional ``intensity_organs`` attribute (organs) replaces the organs
    asked for when choosing the intensity window (a learned head keeps its training window).
    """

    def __call__(
        self, images: Sequence[np.ndarray], organs: Sequence[Organ], indices: Sequence[int]
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
    """The SaLIP cascade with loaded models, prompts and settings.

    Args:
        sam: the SAM model (proposals and refinement).
        clip: the CLIP model (scoring).
        prompts: organ name -> its descriptions.
        config: all settings.
        device: where the models run.
        timer: stage timer to add to.
        competitors: organ name -> competing classes' descriptions, for contrast scoring
            (see :func:`salip.core.prompts.load_competitors`).
        text_cache: folder of the on-disk text-embedding cache (None: memory only).
    """

    def __init__(
        self,
        sam: LoadedSam,
        clip: LoadedClip,
        prompts: dict[str, PromptSet],
        config: SegmentConfig,
        device: str,
        timer: StageTimer | None = None,
        competitors: dict[str, list[PromptSet]] | None = None,
        text_cache: Path | None = None,
    ) -> None:
        self.sam = sam
        self.precision = resolve_precision(config.models.precision, device)
        self.scorer = ClipScorer(clip, device, cache_dir=text_cache, precision=self.precision)
        # Halved for the rest of the run if the device runs out of memory.
        self.encoder_batch = encoder_batch(config.proposals.encoder_batch_size, device)
        self.decoder_batch = decoder_batch(config.proposals, device)
        #: Slices per call that :func:`salip.segment` should send when the setting is auto.
        self.slice_batch = slice_batch(config.proposals.encoder_batch_size, device)
        self.prompts = prompts
        self.config = config
        self.timer = timer or StageTimer()
        self.contrast = config.scoring.scoring == "contrast"
        # Text embeddings once per run, not per slice.
        start = time.perf_counter()
        self.text = {
            name: self.scorer.text_embedding(p.descriptions) for name, p in prompts.items()
        }
        self.classes: dict[str, list[str]] = {}
        self.class_emb: dict[str, torch.Tensor] = {}
        if self.contrast:
            for name in prompts:
                rivals = (competitors or {}).get(name, [])
                self.classes[name] = [name, *(p.organ for p in rivals)]
                self.class_emb[name] = torch.stack(
                    [self.text[name], *(self.scorer.text_embedding(p.descriptions) for p in rivals)]
                )
        self.timer.add("clip_text", start)

    def top_k(self, organ: Organ) -> int:
        """Crops kept per slice for ``organ``: the configured value or the organ's own."""
        return self.config.scoring.top_k or organ.top_k

    def select(
        self, organ: Organ, crop_emb: torch.Tensor, boxes: torch.Tensor, image: np.ndarray
    ) -> tuple[list[int], dict[str, Any]]:
        """Pick the crops of one slice that become box prompts for ``organ``.

        Args:
            organ: the target.
            crop_emb: NxD normalised crop embeddings of the slice's proposals.
            boxes: Nx4 proposal boxes, XYXY in pixels of the display image.
            image: HxWx3 uint8 display image (for the body midline).

        Returns:
            (picked proposal indices, best first; per-proposal score lists for the report:
            ``clip_score`` always, ``probability`` and ``margin`` with contrast scoring,
            ``side`` with laterality).
        """
        cfg = self.config.scoring
        cosine = cosine_scores(crop_emb, self.text[organ.name])
        keep = torch.ones(len(cosine), dtype=torch.bool)
        info: dict[str, Any] = {"clip_score": cosine.tolist()}
        score = cosine
        if self.contrast:
            prob, margin = contrast_scores(
                crop_emb, self.class_emb[organ.name], self.scorer.logit_scale
            )
            keep &= (margin > cfg.contrast_margin).cpu()
            info["probability"], info["margin"], score = prob.tolist(), margin.tolist(), prob
        if cfg.min_score is not None:
            keep &= (cosine >= cfg.min_score).cpu()
        k = self.top_k(organ)
        lateral_parts = [get_organ(p).laterality for p in organ.parts]
        use_sides = (
            cfg.laterality
            and self.config.slicing.axis in IN_PLANE_AXES
            and (organ.laterality != "none" or lateral_parts)
        )
        if not use_sides:
            return select_top_k(score, k, keep), info
        sides = patient_sides(boxes, body_midline(image))
        info["side"] = sides
        if organ.laterality != "none":
            on_side = torch.tensor([s == organ.laterality for s in sides], dtype=torch.bool)
            return select_top_k(score, k, keep & on_side), info
        # A pair: the best crops on each side, then best first overall.
        per_side = max(1, k // len(lateral_parts))
        picked = []
        for side in lateral_parts:
            on_side = torch.tensor([s == side for s in sides], dtype=torch.bool)
            picked += select_top_k(score, per_side, keep & on_side)
        return sorted(picked, key=lambda i: -float(score[i])), info

    def prepare(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """CPU preparation of a batch for the encoder (resizing); :func:`salip.segment` runs
        it in a background thread, one batch ahead, and passes the result to the call."""
        return resize_for_encoder(self.sam.model, images)

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[np.ndarray],
        organs: Sequence[Organ],
        indices: Sequence[int] | None = None,
        prepared: Sequence[np.ndarray] | None = None,
    ) -> list[SliceOutput]:
        """Segment ``organs`` in a batch of HxWx3 uint8 display slices (``indices`` unused;
        ``prepared``: :meth:`prepare` of the images, if already computed)."""
        cfg, timer, model = self.config, self.timer, self.sam.model
        t = time.perf_counter()
        embeddings = encode_images(
            model,
            images,
            self.encoder_batch,
            precision=self.precision,
            encoder=fast_encoder(model, compile=cfg.models.compile),
            resized=prepared,
        )
        t = timer.add("sam_encoder", t)
        # Point prompts of the whole batch are decoded together, across slices.
        per_slice = [
            area_filter(props, cfg.area)
            for props in generate_proposals_batch(
                model, embeddings, cfg.proposals, self.decoder_batch
            )
        ]
        t = timer.add("proposals", t)
        crops, owner = [], []
        for i, (image, props) in enumerate(zip(images, per_slice)):
            slice_crops = make_crops(image, props, cfg.crops)
            crops.extend(slice_crops)
            owner.extend([i] * len(slice_crops))
        t = timer.add("crops", t)
        # One pass of crop embeddings serves every organ of the run.
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
                    slice_boxes = props.boxes.cpu()
                    picked, info = self.select(
                        organ, crop_emb[rows.to(crop_emb.device)], slice_boxes, images[i]
                    )
                    t = timer.add("scoring", t)
                    if picked:
                        idx = torch.as_tensor(picked, dtype=torch.long)
                        boxes = prompt_boxes(
                            props.boxes[idx.to(props.boxes.device)], cfg.refine.box_margin, h, w
                        )
                        refined, iou = refine_with_boxes(model, emb, boxes)
                        mask = refined.any(0).cpu().numpy()
                        for j, p in enumerate(picked):
                            x0, y0, x1, y1 = slice_boxes[p].tolist()
                            records.append(
                                {
                                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                                    **{key: values[p] for key, values in info.items()},
                                    "area": int(props.areas[p]),
                                    "refine_iou": float(iou[j]),
                                }
                            )
                out.masks[organ.name] = mask
                out.chosen[organ.name] = records
            outputs.append(out)
            t = timer.add("refine", t)
        return outputs
