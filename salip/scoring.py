"""Stage 5, scoring: CLIP similarity between crops and the organ's descriptions.

An organ's text embedding is the mean of its L2-normalised description embeddings,
normalised again; a crop's score is the cosine between its normalised image embedding and
that vector. Text embeddings are computed once per run and cached on the scorer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from salip.models.clip import LoadedClip


class ClipScorer:
    """Scores RGB crops against organ descriptions with one CLIP model."""

    def __init__(self, clip: LoadedClip, device: str | torch.device, batch_size: int = 64):
        self.clip = clip
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.no_grad()
    def text_embedding(self, descriptions: Sequence[str]) -> torch.Tensor:
        """D float tensor: normalised mean of normalised description embeddings (cached)."""
        key = tuple(descriptions)
        if key not in self._text:
            tokens = self.clip.tokenizer(list(descriptions)).to(self.device)
            emb = self.clip.model.encode_text(tokens).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            self._text[key] = mean / mean.norm()
        return self._text[key]

    @torch.no_grad()
    def image_embeddings(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """NxD float tensor of normalised CLIP embeddings of HxWx3 uint8 RGB crops.

        Each crop goes through open_clip's own preprocess, then ``encode_image``.
        """
        from PIL import Image

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
            emb = self.clip.model.encode_image(batch).float()
            out.append(emb / emb.norm(dim=-1, keepdim=True))
        return torch.cat(out)


def cosine_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """N cosine scores of normalised image embeddings (NxD) against one text vector (D)."""
    if image_emb.numel() == 0:
        return torch.zeros(0)
    return image_emb @ text_emb


def select_top_k(scores: torch.Tensor, k: int, min_score: float | None = None) -> list[int]:
    """Indices of the ``k`` best scores, best first; ties keep the lower index (stable).

    Scores below ``min_score`` are never selected.
    """
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices.tolist()
    picked = [i for i in order if min_score is None or float(scores[i]) >= min_score]
    return picked[:k]
