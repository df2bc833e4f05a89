"""Segmenting with a trained head (loaded by :func:`salip.models.head.load_head`): a slice
segmenter that the ``slices`` strategy drives, as it drives the cascade."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError
from salip.core.organs import Organ
from salip.engines.encoder import encoder_batch, slice_batch
from salip.models.head import LoadedHead
from salip.models.sam import LoadedSam
from salip.models.sam_runtime import BatchSize, encode_images
from salip.strategies.base import SliceOutput

__all__ = [
    "HeadSegmenter",
]

logger = logging.getLogger(__name__)


class HeadSegmenter:
    """A slice segmenter (:class:`salip.strategies.base.SliceSegmenter`) running a trained head.

    Each batch of slices is encoded by SAM, the head gives per-class logits in the 1/4 frame
    of the encoder input, the SAM's preprocessing profile (for ``sam``,
    ``Sam.postprocess_masks``: segment-anything's crop and resize) brings them to each
    slice's size, and a class is where its sigmoid exceeds 0.5 (fixed). No other
    post-processing: ``salip.segment``'s ``largest_component`` applies as for any method.

    Args:
        head: the loaded head (:func:`load_head`, with the same ``sam``).
        sam: the SAM model whose encoder the head was trained on.
        batch_size: slices per encoder call (halved on out-of-memory); a
            :class:`~salip.models.sam_runtime.BatchSize` is used as it is (e.g. an auto one
            from :func:`salip.engines.encoder.encoder_batch`).
        precision: encoder precision, resolved ("fp32", "bf16", "fp16"); best the one the
            head was trained with (its manifest's ``encoder_precision``).
        slice_batch: slices per call to ask for (default: the encoder batch, at least 4).

    Attributes:
        slice_batch: slices per call :func:`salip.segment` should send (auto batch size).
        intensity_organs: the head's classes: slices are mapped to 8 bits with their window,
            as in training, whatever organs are asked for.
    """

    def __init__(
        self,
        head: LoadedHead,
        sam: LoadedSam,
        *,
        batch_size: int | BatchSize = 4,
        precision: str = "fp32",
        slice_batch: int | None = None,
    ):
        from salip.core.organs import get_organ

        self.head, self.sam = head, sam
        self.batch = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
        self.slice_batch = slice_batch or max(4, self.batch.value)
        self.precision = precision
        self.intensity_organs = [get_organ(name) for name in head.classes]

    @classmethod
    def for_config(
        cls, head: LoadedHead, sam: LoadedSam, config: SegmentConfig, device: str
    ) -> HeadSegmenter:
        """A segmenter with the batch sizes (``encoder_batch_size``, 0: auto) and encoder
        precision of ``config`` on ``device``, as the cascade would use them."""
        from salip.models.precision import resolve_precision

        setting = config.proposals.encoder_batch_size
        return cls(
            head,
            sam,
            batch_size=encoder_batch(setting, device),
            precision=resolve_precision(config.models.precision, device),
            slice_batch=slice_batch(setting, device),
        )

    def check_organs(self, organs: Sequence[Organ]) -> list[int]:
        """The head's output channel of each organ.

        Raises:
            ConfigError: an organ the head was not trained for (the message lists its classes).
        """
        missing = [o.name for o in organs if o.name not in self.head.classes]
        if missing:
            raise ConfigError(
                f"the head {self.head.path} does not segment {', '.join(missing)}; its classes "
                f"are: {', '.join(self.head.classes)}. Ask for those, or train a head with "
                "these organs."
            )
        return [self.head.classes.index(o.name) for o in organs]

    @torch.no_grad()
    def __call__(
        self, images: Sequence[np.ndarray], organs: Sequence[Organ], indices: Sequence[int]
    ) -> list[SliceOutput]:
        """HxWx3 uint8 display slices -> one :class:`SliceOutput` (HxW bool per organ) each."""
        channels = self.check_organs(organs)
        embeddings = encode_images(
            self.sam.model,
            images,
            self.batch,
            precision=self.precision,
            preprocess=self.sam.preprocess,
        )
        if not embeddings:
            return []
        device = next(self.head.model.parameters()).device
        features = torch.cat([e.features for e in embeddings]).to(device)
        logits = self.head.model(features)[:, channels]
        outputs = []
        for i, embedding in enumerate(embeddings):
            full = embedding.preprocess.masks(
                self.sam.model, logits[i : i + 1], embedding.input_size, embedding.original_size
            )[0]
            masks = (full > 0).cpu().numpy()  # sigmoid > 0.5 <=> logit > 0
            outputs.append(SliceOutput(masks={o.name: masks[j] for j, o in enumerate(organs)}))
        return outputs
