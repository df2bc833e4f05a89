"""The Proposer role: embedded slices in, everything-mode proposals out.

:class:`SamProposer` is segment-anything's automatic mask generator on the kept
embeddings (:mod:`salip.engines.everything_mode`, matching ``SamAutomaticMaskGenerator``), with
the point prompts of a whole batch decoded together across slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from salip.core.config import ProposalConfig
from salip.engines.everything_mode import Proposals, decoder_batch, generate_proposals_batch
from salip.models.sam import LoadedSam
from salip.models.sam_runtime import ImageEmbedding

__all__ = [
    "Proposer",
    "SamProposer",
]


class Proposer(Protocol):
    """Proposes the parts of embedded slices."""

    def propose(
        self,
        embeddings: Sequence[ImageEmbedding],
        regions: Sequence[np.ndarray | None] | None = None,
    ) -> list[Proposals]:
        """One :class:`~salip.engines.everything_mode.Proposals` per embedding: NxHxW bool masks
        at the slice's size, boxes XYXY in pixels of the slice, areas, scores.

        ``regions`` (one HxW bool array or None per embedding) says where on each slice a
        part may be seeded: a proposer that seeds parts from points seeds none outside it.
        """
        ...


class SamProposer:
    """SAM's everything mode (see :class:`Proposer`).

    Args:
        sam: the loaded SAM.
        config: grid, thresholds and point batch (``points_per_batch``, 0: auto).
        device: where SAM runs (for the auto point batch).
    """

    def __init__(self, sam: LoadedSam, config: ProposalConfig, device: str) -> None:
        self.sam, self.config = sam, config
        # Halved for the rest of the run if the device runs out of memory.
        self.batch = decoder_batch(config, device, sam.runtime)

    @torch.no_grad()
    def propose(
        self,
        embeddings: Sequence[ImageEmbedding],
        regions: Sequence[np.ndarray | None] | None = None,
    ) -> list[Proposals]:
        return generate_proposals_batch(
            self.sam.model, embeddings, self.config, self.batch, regions, self.sam.onnx
        )
