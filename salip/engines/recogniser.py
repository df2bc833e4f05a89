"""The Recogniser role: slices with their proposals and a set of classes in, per-proposal
scores and the picked proposals per class out.

:class:`ClipRecogniser` is SaLIP's: each proposal becomes a crop, CLIP embeds the crops of a
whole batch in one pass, and each organ's crops are scored against its language-model
descriptions by cosine (``salip`` scoring) or by softmax over the organ and its competing
classes (``contrast`` scoring); with ``laterality``, left/right organs keep only crops on
their side of the body midline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from salip.core.config import SegmentConfig
from salip.core.organs import Organ
from salip.core.prompts import PromptSet
from salip.core.timing import StageTimer
from salip.engines.crops import make_crops
from salip.engines.everything_mode import Proposals
from salip.engines.laterality import IN_PLANE_AXES, body_midline, patient_sides
from salip.engines.scoring import (
    ClipScorer,
    contrast_scores,
    cosine_scores,
    select_top_k,
    top_competitors,
)
from salip.models.clip import LoadedClip
from salip.models.precision import resolve_precision

__all__ = [
    "accepted",
    "ClipRecogniser",
    "pick",
    "Recogniser",
    "Recognition",
    "sides_for",
]


@dataclass
class Recognition:
    """What a recogniser says about one slice's proposals.

    Attributes:
        picked: organ name -> indices of the proposals picked for it (its top-k of the
            accepted, per side for a left/right pair), best first.
        scores: organ name -> per-proposal score lists for the report (one value per
            proposal): ``clip_score`` (cosine with the organ) always, ``probability`` and
            ``margin`` with contrast scoring, ``side`` ("left"/"right", patient side) with
            laterality.
        accepted: organ name -> every proposal the recogniser accepts as the organ (for a
            one-sided organ, on its side), best first; ``picked`` is drawn from these. A
            recogniser that cannot reject (cosine scoring without ``min_score``) accepts
            only what it picks.
        score: organ name -> per-proposal ranking score in [0, 1] for probabilities (the
            organ's probability with contrast scoring; cosine otherwise).
    """

    picked: dict[str, list[int]]
    scores: dict[str, dict[str, list[Any]]]
    accepted: dict[str, list[int]] = field(default_factory=dict)
    score: dict[str, list[float]] = field(default_factory=dict)


class Recogniser(Protocol):
    """Scores proposals against classes and picks each organ's."""

    def recognise(
        self,
        images: Sequence[np.ndarray],
        proposals: Sequence[Proposals],
        organs: Sequence[Organ],
        indices: Sequence[int] | None = None,
    ) -> list[Recognition]:
        """One :class:`Recognition` per HxWx3 uint8 display image and its proposals (boxes
        XYXY in pixels of that image); ``indices`` are the slices' indices along the axis,
        for engines that need them (simulated ones)."""
        ...


def sides_for(
    organ: Organ, boxes: torch.Tensor, image: np.ndarray, *, laterality: bool, axis: str
) -> list[str] | None:
    """Each proposal's patient side ("left"/"right", from its box centre and the body
    midline of the HxWx3 display image), or None where sides do not apply: laterality off,
    a sagittal axis, or an organ neither one-sided nor made of parts (a left/right pair).

    Args:
        organ: the target.
        boxes: Nx4 proposal boxes, XYXY in pixels of ``image``.
        image: HxWx3 uint8 display image.
        laterality: the ``laterality`` setting.
        axis: the slicing axis.
    """
    if not (laterality and axis in IN_PLANE_AXES and (organ.laterality != "none" or organ.parts)):
        return None
    return patient_sides(boxes, body_midline(image))


def pick(
    organ: Organ, score: torch.Tensor, keep: torch.Tensor, sides: list[str] | None, k: int
) -> list[int]:
    """The top-``k`` accepted proposals, best first.

    Args:
        organ: the target.
        score: N ranking scores.
        keep: N bool, accepted before sides.
        sides: N patient sides ("left"/"right") with laterality, else None.
        k: proposals kept; for a left/right pair, ``k // 2`` (at least 1) per side.
    """
    if sides is None:
        return select_top_k(score, k, keep)
    if organ.laterality != "none":
        on_side = torch.tensor([s == organ.laterality for s in sides], dtype=torch.bool)
        return select_top_k(score, k, keep & on_side)
    # A pair: the best crops on each side, then best first overall. A pair's parts are its
    # left then its right member (checked when the vocabulary is read).
    lateral_parts = ["left", "right"]
    per_side = max(1, k // len(lateral_parts))
    picked = []
    for side in lateral_parts:
        on_side = torch.tensor([s == side for s in sides], dtype=torch.bool)
        picked += select_top_k(score, per_side, keep & on_side)
    return sorted(picked, key=lambda i: -float(score[i]))


def accepted(
    organ: Organ, score: torch.Tensor, keep: torch.Tensor, sides: list[str] | None
) -> list[int]:
    """Every accepted proposal (on the organ's side, for a one-sided organ with
    laterality), best first (arguments as :func:`pick`)."""
    if sides is not None and organ.laterality != "none":
        keep = keep & torch.tensor([s == organ.laterality for s in sides], dtype=torch.bool)
    return select_top_k(score, len(score), keep)


class ClipRecogniser:
    """Crops + CLIP (see :class:`Recogniser`).

    Args:
        clip: the CLIP model.
        prompts: organ name -> its descriptions.
        config: all settings (crops, scoring, and the slicing axis for laterality).
        device: where CLIP runs.
        timer: stage timer to add to ("clip_text", "crops", "clip_image", "scoring").
        competitors: organ name -> competing classes' descriptions, for contrast scoring
            (see :func:`salip.core.prompts.load_competitors`).
        text_cache: folder of the on-disk text-embedding cache (None: memory only).
        text_memo: text embeddings shared with other recognisers of the same CLIP model
            (see :class:`ClipScorer`).

    Attributes:
        scorer: the CLIP scorer (logit scale, text-cache hits and misses).
        classes: organ name -> its class names, itself first (contrast scoring).
    """

    def __init__(
        self,
        clip: LoadedClip,
        prompts: dict[str, PromptSet],
        config: SegmentConfig,
        device: str,
        timer: StageTimer | None = None,
        competitors: dict[str, list[PromptSet]] | None = None,
        text_cache: Path | None = None,
        text_memo: dict[tuple[str, ...], torch.Tensor] | None = None,
    ) -> None:
        precision = resolve_precision(config.models.precision, device)
        self.scorer = ClipScorer(
            clip, device, cache_dir=text_cache, precision=precision, memo=text_memo
        )
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

    @property
    def has_acceptance(self) -> bool:
        """Whether scoring can reject a crop (contrast scoring, or a ``min_score``); without
        it every crop passes, so only the picked ones count as accepted."""
        return self.contrast or self.config.scoring.min_score is not None

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
            (picked proposal indices, best first; per-proposal score lists, as
            :attr:`Recognition.scores`).
        """
        score, keep, info = self.assess(organ, crop_emb, boxes, image)
        return pick(organ, score, keep, info.get("side"), self.top_k(organ)), info

    def assess(
        self, organ: Organ, crop_emb: torch.Tensor, boxes: torch.Tensor, image: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(N ranking scores, N bool accepted before sides, per-proposal score lists) of
        one slice's crops for ``organ`` (arguments as :meth:`select`)."""
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
            info["competitors"] = top_competitors(
                crop_emb,
                self.class_emb[organ.name],
                self.scorer.logit_scale,
                self.classes[organ.name],
            )
        if cfg.min_score is not None:
            keep &= (cosine >= cfg.min_score).cpu()
        sides = sides_for(
            organ, boxes, image, laterality=cfg.laterality, axis=self.config.slicing.axis
        )
        if sides is not None:
            info["side"] = sides
        return score, keep, info

    @torch.no_grad()
    def recognise(
        self,
        images: Sequence[np.ndarray],
        proposals: Sequence[Proposals],
        organs: Sequence[Organ],
        indices: Sequence[int] | None = None,
    ) -> list[Recognition]:
        t = time.perf_counter()
        crops, owner = [], []
        for i, (image, props) in enumerate(zip(images, proposals, strict=True)):
            slice_crops = make_crops(image, props, self.config.crops)
            crops.extend(slice_crops)
            owner.extend([i] * len(slice_crops))
        t = self.timer.add("crops", t)
        # One pass of crop embeddings serves every organ of the run.
        crop_emb = self.scorer.image_embeddings(crops)
        t = self.timer.add("clip_image", t)
        owner_t = torch.as_tensor(owner, dtype=torch.long)
        results = []
        for i, props in enumerate(proposals):
            rows = torch.nonzero(owner_t == i).flatten()
            found = Recognition(picked={}, scores={}, accepted={}, score={})
            for organ in organs:
                found.picked[organ.name], found.accepted[organ.name] = [], []
                found.scores[organ.name], found.score[organ.name] = {}, []
                if len(rows):
                    emb = crop_emb[rows.to(crop_emb.device)]
                    score, keep, info = self.assess(organ, emb, props.boxes.cpu(), images[i])
                    sides = info.get("side")
                    found.picked[organ.name] = pick(organ, score, keep, sides, self.top_k(organ))
                    found.accepted[organ.name] = (
                        accepted(organ, score, keep, sides)
                        if self.has_acceptance
                        else found.picked[organ.name]
                    )
                    found.scores[organ.name], found.score[organ.name] = info, score.tolist()
            results.append(found)
        self.timer.add("scoring", t)
        return results
