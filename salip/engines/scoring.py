"""Scoring: CLIP similarity between crops and the organs' descriptions.

A class's text embedding is the mean of its L2-normalised description embeddings,
normalised again. Two scorings use it:

* ``salip`` (the paper's): a crop's score is the cosine between its normalised image
  embedding and the target's text vector; the top-k crops of every slice are kept.
* ``contrast``: a softmax, at CLIP's own logit scale, over the target and its competing
  classes (other organs plausible in that modality and body region, and the background).
  A crop is accepted only if the target's probability beats every competitor's by more
  than a margin; accepted crops are ranked by the target's probability.

Text embeddings are cached in memory and on disk (``<SALIP_HOME>/cache/text``), keyed by
the CLIP text tower's fingerprint and the hash of the descriptions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from salip.models.clip import LoadedClip

__all__ = [
    "ClipScorer",
    "contrast_scores",
    "cosine_scores",
    "select_top_k",
    "text_tower_fingerprint",
    "top_competitors",
]

logger = logging.getLogger(__name__)


def text_tower_fingerprint(model: torch.nn.Module) -> str:
    """Short hash identifying a CLIP model's text tower: its weights and its layers.

    Hashes every non-visual parameter's name, shape and float64 sum and absolute sum:
    cheap (no copy of the weights) and changed by any real fine-tune or checkpoint swap;
    and the class of every non-visual module, so the same weights built with another
    activation (QuickGELU or GELU) get another hash.
    """
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        if not name.startswith("visual"):
            digest.update(f"{name}:{type(module).__name__}".encode())
    with torch.no_grad():
        for name, param in model.state_dict().items():
            if name.startswith("visual."):
                continue
            p = param.detach().double()
            digest.update(
                f"{name}{tuple(p.shape)}{p.sum().item():.9e}{p.abs().sum().item():.9e}".encode()
            )
    return digest.hexdigest()[:16]


class ClipScorer:
    """Embeds crops and description sets with one CLIP model.

    Args:
        clip: the loaded CLIP model.
        device: where it runs.
        batch_size: crops per image-encoder batch.
        cache_dir: folder of the on-disk text-embedding cache (None: memory only).
        precision: resolved precision of the image tower ("fp32", "bf16", "fp16"); text
            embeddings are always computed in fp32.
        memo: a dict of text embeddings (descriptions -> embedding) to share with other
            scorers of the same CLIP model, e.g. every case of a run (None: its own).
    """

    def __init__(
        self,
        clip: LoadedClip,
        device: str | torch.device,
        batch_size: int = 64,
        cache_dir: Path | None = None,
        precision: str = "fp32",
        memo: dict[tuple[str, ...], torch.Tensor] | None = None,
    ):
        self.clip = clip
        self.precision = precision
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._text: dict[tuple[str, ...], torch.Tensor] = {} if memo is None else memo
        self._fingerprint: str | None = None
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def logit_scale(self) -> float:
        """CLIP's learned softmax temperature (exp of ``logit_scale``), 100 if it has none."""
        scale = getattr(self.clip.model, "logit_scale", None)
        return float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0

    def _cache_path(self, descriptions: Sequence[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        if self._fingerprint is None:
            self._fingerprint = text_tower_fingerprint(self.clip.model)
        key = json.dumps([self.clip.name, self._fingerprint, list(descriptions)])
        return self.cache_dir / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()}.pt"

    @torch.no_grad()
    def text_embedding(self, descriptions: Sequence[str]) -> torch.Tensor:
        """D float tensor: normalised mean of normalised description embeddings (cached)."""
        key = tuple(descriptions)
        if key in self._text:
            return self._text[key]
        path = self._cache_path(descriptions)
        if path is not None and path.is_file():
            try:
                mean = torch.load(path, map_location=self.device, weights_only=True)
                self._text[key] = mean
                self.cache_hits += 1
                return mean
            except (OSError, RuntimeError, EOFError) as exc:  # a torn or foreign file
                logger.warning("ignoring unreadable text-embedding cache %s (%s)", path, exc)
        self.cache_misses += 1
        tokens = self.clip.tokenizer(list(descriptions)).to(self.device)
        emb = self.clip.model.encode_text(tokens).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(0)
        mean = mean / mean.norm()
        self._text[key] = mean
        if path is not None:
            from salip.io.writing import atomic_write

            try:
                atomic_write(path, lambda tmp: torch.save(mean.cpu(), tmp))
            except OSError as exc:  # a read-only cache must not stop a run
                logger.warning("cannot write text-embedding cache %s (%s)", path, exc)
        return mean

    @torch.no_grad()
    def image_embeddings(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """NxD float tensor of normalised CLIP embeddings of HxWx3 uint8 RGB crops.

        Each crop goes through open_clip's own preprocess, then ``encode_image`` (under
        autocast at the scorer's precision; the embeddings come back as float32).
        """
        from PIL import Image

        from salip.models.precision import autocast

        if not crops:
            return torch.zeros((0, 0), device=self.device)
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack(
                [
                    self.clip.preprocess(Image.fromarray(c))
                    for c in crops[start : start + self.batch_size]
                ]
            ).to(self.device)
            with autocast(self.device, self.precision):
                emb = self.clip.model.encode_image(batch).float()
            out.append(emb / emb.norm(dim=-1, keepdim=True))
        return torch.cat(out)


def cosine_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """N cosine scores of normalised image embeddings (NxD) against one text vector (D)."""
    if image_emb.numel() == 0:
        return torch.zeros(0)
    return image_emb @ text_emb


def contrast_scores(
    image_emb: torch.Tensor, class_emb: torch.Tensor, logit_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target probability and margin of each crop against competing classes.

    Args:
        image_emb: NxD normalised crop embeddings.
        class_emb: CxD normalised class text embeddings; row 0 is the target, the others
            its competitors (C >= 1).
        logit_scale: multiplier of the cosines before the softmax (CLIP's own).

    Returns:
        (N target probabilities, N margins = target probability minus the best
        competitor's; with no competitor the margin is 1).
    """
    if image_emb.numel() == 0:
        return torch.zeros(0), torch.zeros(0)
    probs = torch.softmax(logit_scale * image_emb @ class_emb.T, dim=-1)
    target = probs[:, 0]
    if probs.shape[1] == 1:
        return target, torch.ones_like(target)
    return target, target - probs[:, 1:].max(dim=1).values


def top_competitors(
    image_emb: torch.Tensor,
    class_emb: torch.Tensor,
    logit_scale: float,
    names: Sequence[str],
    k: int = 3,
) -> list[dict[str, float]]:
    """The ``k`` most probable competing classes of each crop, as in :func:`contrast_scores`.

    Args:
        image_emb: NxD normalised crop embeddings.
        class_emb: CxD class text embeddings; row 0 is the target.
        logit_scale: as for :func:`contrast_scores`.
        names: the C class names, in ``class_emb``'s order.
        k: competitors kept per crop.

    Returns:
        Per crop: competitor name -> probability (4 decimals), most probable first.
    """
    if image_emb.numel() == 0 or class_emb.shape[0] < 2:
        return [{} for _ in range(image_emb.shape[0])]
    probs = torch.softmax(logit_scale * image_emb @ class_emb.T, dim=-1)[:, 1:].cpu()
    top = torch.topk(probs, min(k, probs.shape[1]), dim=1)
    return [
        {names[1 + int(c)]: round(float(v), 4) for v, c in zip(values, columns)}
        for values, columns in zip(top.values, top.indices)
    ]


def select_top_k(scores: torch.Tensor, k: int, keep: torch.Tensor | None = None) -> list[int]:
    """Indices of the ``k`` best scores, best first; ties keep the lower index (stable).

    Args:
        scores: N scores.
        k: how many to return at most.
        keep: N bool; only these are eligible (default: all).
    """
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices.tolist()
    if keep is not None:
        allowed = keep.cpu().tolist()
        order = [i for i in order if allowed[i]]
    return order[:k]
