"""The Encoder role: HxWx3 uint8 slice images in, SAM image embeddings out.

:class:`SamEncoder` is salip's: segment-anything's image encoder, batched, with the batch
halved on out-of-memory, the run's precision, and ``torch.compile`` when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from salip.core.config import SegmentConfig
from salip.models.precision import resolve_precision
from salip.models.sam import LoadedSam
from salip.models.sam_runtime import (
    BatchSize,
    ImageEmbedding,
    encode_images,
    fast_encoder,
    resize_for_encoder,
)

__all__ = [
    "AUTO_ENCODER_CPU",
    "AUTO_SLICES_CPU",
    "AUTO_SLICES_CUDA",
    "Encoder",
    "encoder_batch",
    "SamEncoder",
    "slice_batch",
]

#: Auto batch sizes (``encoder_batch_size = 0``): slices per strategy batch on CPU, and
#: the cap on CUDA, where the encoder batch is measured against free memory.
AUTO_SLICES_CPU = 4
AUTO_SLICES_CUDA = 32
#: Slices per encoder call on CPU (auto). A vit_b encoder call on 4 slices took 18.5 s a
#: slice and 11.3 GB at its peak on a 2-core CPU; on 1 slice, 12.8 s and 3.7 GB
#: (benchmarks/RESULTS.md, "Host memory, 512x512x200"): batching buys a CPU nothing.
AUTO_ENCODER_CPU = 1


def encoder_batch(setting: int, device: str) -> BatchSize:
    """Slices per SAM encoder call for ``encoder_batch_size = setting`` (0: auto)."""
    return BatchSize.from_setting(
        setting, device, default=AUTO_ENCODER_CPU, probe=1, cap=AUTO_SLICES_CUDA
    )


def slice_batch(setting: int, device: str) -> int:
    """Slices per strategy batch for ``encoder_batch_size = setting`` (0: auto)."""
    if setting:
        return setting
    return AUTO_SLICES_CUDA if torch.device(device).type == "cuda" else AUTO_SLICES_CPU


class Encoder(Protocol):
    """Turns slice images into image embeddings.

    ``prepare`` is the CPU part (resizing), safe to run in a background thread one batch
    ahead; ``encode`` takes its result as ``prepared`` (or None to prepare itself).
    """

    def prepare(self, images: Sequence[np.ndarray]) -> Any:
        """CPU preparation of HxWx3 uint8 RGB images for :meth:`encode`."""
        ...

    def encode(
        self,
        images: Sequence[np.ndarray],
        prepared: Any | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[ImageEmbedding]:
        """One embedding per HxWx3 uint8 image: for SAM an
        :class:`~salip.models.sam_runtime.ImageEmbedding` (features 1xCx64x64 on the model's
        device); any engine's has ``original_size``, the image's (H, W). ``indices`` are
        the slices' indices along the axis, for engines that need them (simulated ones)."""
        ...


class SamEncoder:
    """SAM's image encoder (see :class:`Encoder`), on ONNX Runtime when the model was
    loaded with it (``LoadedSam.onnx``), else on torch.

    Args:
        sam: the loaded SAM.
        batch: slices per encoder call; halved for the rest of the run on out-of-memory.
        precision: "fp32", "bf16" or "fp16", resolved for the device.
        compile: run the encoder through ``torch.compile``.
    """

    def __init__(
        self, sam: LoadedSam, batch: BatchSize, *, precision: str = "fp32", compile: bool = False
    ) -> None:
        self.sam, self.batch, self.precision, self.compile = sam, batch, precision, compile

    @classmethod
    def for_config(cls, sam: LoadedSam, config: SegmentConfig, device: str) -> SamEncoder:
        """The encoder with ``config``'s batch size (0: auto), precision and compile flag."""
        return cls(
            sam,
            encoder_batch(config.proposals.encoder_batch_size, device),
            precision=resolve_precision(config.models.precision, device),
            compile=config.models.compile,
        )

    def prepare(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Images resized for the encoder by the checkpoint's preprocessing profile."""
        return resize_for_encoder(self.sam.model, images, self.sam.preprocess)

    @torch.no_grad()
    def encode(
        self,
        images: Sequence[np.ndarray],
        prepared: Sequence[np.ndarray] | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[ImageEmbedding]:
        model = self.sam.model
        onnx = self.sam.onnx
        return encode_images(
            model,
            images,
            self.batch,
            precision=self.precision,
            encoder=fast_encoder(model, compile=self.compile) if onnx is None else onnx.encoder,
            resized=prepared,
            preprocess=self.sam.preprocess,
        )
