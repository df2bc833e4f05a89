"""Running a loaded SAM: batched image encoding and prompt decoding.

The encoder runs once per slice, over batches of slices; the resulting
:class:`ImageEmbedding` is kept and reused by both the everything-mode pass (stage 3) and
the box-prompt pass (stage 6), so no image is encoded twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from salip.models.sam_decoder import predict_masks_shared
from salip.models.sam_preprocess import SAM_PREPROCESS, SamPreprocess

__all__ = [
    "BatchSize",
    "decode",
    "decode_points_across",
    "encode_images",
    "fast_encoder",
    "ImageEmbedding",
    "is_oom",
    "OutOfMemoryError",
    "resize_for_encoder",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass
class ImageEmbedding:
    """SAM image embedding of one slice.

    Attributes:
        features: 1xCxhxw float tensor (C = prompt embed dim, h = w = image_size / 16).
        input_size: (H', W') of the slice inside the encoder input, before padding
            (after ResizeLongestSide for the ``sam`` profile).
        original_size: (H, W) of the slice as given.
        preprocess: the profile the slice was encoded with; prompts against this embedding
            and the masks they give are mapped with the same profile.
    """

    features: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    preprocess: SamPreprocess = SAM_PREPROCESS


class BatchSize:
    """A batch size that halves on device out-of-memory and stays halved.

    Build it with :meth:`from_setting` to honour the "0 means auto" settings: on CUDA the
    first call then runs a probe batch and :meth:`calibrate` sizes later batches from its
    measured peak memory and the free device memory.

    Attributes:
        value: the current batch size (>= 1).
        reductions: how many times it was halved.
        cap: the largest size calibration may choose.
        calibrating: the next call should measure its memory and call :meth:`calibrate`.
    """

    def __init__(self, value: int, *, cap: int | None = None):
        self.value = max(1, int(value))
        self.reductions = 0
        self.cap = self.value if cap is None else int(cap)
        self.calibrating = False

    @classmethod
    def from_setting(
        cls, setting: int, device: str | torch.device, *, default: int, probe: int, cap: int
    ) -> BatchSize:
        """A batch size for a setting where 0 means auto.

        Args:
            setting: the configured size; >= 1 is used as given.
            device: where the batches run.
            default: the auto size off CUDA.
            probe: the auto size of the first (measured) call on CUDA.
            cap: the largest auto size on CUDA.
        """
        if setting >= 1:
            return cls(setting)
        if torch.device(device).type != "cuda":
            return cls(default)
        size = cls(probe, cap=cap)
        size.calibrating = True
        return size

    def halve(self) -> None:
        self.value = max(1, self.value // 2)
        self.reductions += 1
        self.calibrating = False

    def measure(self, device: torch.device) -> Any:
        """A context measuring the peak memory of the next call when calibrating (CUDA),
        else a no-op context; pass what it yields to :meth:`calibrate` afterwards."""
        import contextlib

        from salip.models.memory import peak_memory

        if self.calibrating and device.type == "cuda":
            return peak_memory(device)
        return contextlib.nullcontext()

    def calibrate(self, meter: Any, items: int, device: torch.device) -> None:
        """Size later batches from a measured call of ``items`` items (no-op for a no-op
        meter): as many items as fit in the free device memory, up to :attr:`cap`."""
        from salip.models.memory import fit_batch, free_device_bytes

        if meter is None or not self.calibrating:
            return
        per_item = meter.bytes / max(1, items)
        self.value = max(self.value, fit_batch(int(per_item), free_device_bytes(device), self.cap))
        self.calibrating = False
        logger.info("batch size %d from %.1f MiB measured per item", self.value, per_item / 2**20)

    def attempt(
        self, work: Callable[[], R], items: int, device: torch.device, action: str, unit: str
    ) -> R | None:
        """Run ``work()`` on one batch of ``items`` items, measured when calibrating.

        On device out-of-memory with a size above 1, frees the allocator's cache, halves and
        returns None: the caller retries the same items, :attr:`value` at a time. Any other
        error, or out-of-memory at size 1, is raised. ``action`` and ``unit`` name the work
        in the warning ("encoding", "slices").
        """
        try:
            with self.measure(device) as meter:
                result = work()
        except RuntimeError as exc:  # OutOfMemoryError is a RuntimeError
            if not is_oom(exc) or self.value == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            self.halve()
            logger.warning(
                "out of device memory %s %d %s; retrying %d at a time",
                action,
                items,
                unit,
                self.value,
            )
            return None
        self.calibrate(meter, items, device)
        return result


#: torch >= 2.5 names it torch.OutOfMemoryError; torch.cuda's alias is older.
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def fast_encoder(sam: torch.nn.Module, *, compile: bool = False) -> torch.nn.Module:
    """SAM's image encoder as salip runs it: fused attention
    (:class:`~salip.models.sam_attention.SdpaImageEncoder`) where the encoder's layout
    allows, and optionally ``torch.compile``; same inputs, outputs and weights.

    Made once per model and setting, and kept on the model (so it lives as long as the
    model does). The model itself is left as it is (stock, eager), so other users of it,
    such as the reference side of ``salip bench-speed``, are unaffected.
    """
    from salip.models.sam_attention import SdpaImageEncoder, supports_sdpa

    # A plain dict attribute: nn.Module registers Module attributes as submodules.
    cache = sam.__dict__.setdefault("_salip_encoders", {})
    if compile not in cache:
        encoder = sam.image_encoder
        if supports_sdpa(encoder):
            encoder = SdpaImageEncoder(encoder)
        cache[compile] = torch.compile(encoder) if compile else encoder
    return cache[compile]


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, OutOfMemoryError) or "out of memory" in str(exc).lower()


def resize_for_encoder(
    sam: torch.nn.Module,
    images: Sequence[np.ndarray],
    preprocess: SamPreprocess = SAM_PREPROCESS,
) -> list[np.ndarray]:
    """Each image resized for the encoder by ``preprocess`` (for the ``sam`` profile,
    segment-anything's ``ResizeLongestSide.apply_image``).

    CPU work with no model call, safe to run in a background thread
    (see :mod:`salip.core.prefetch`).

    Args:
        sam: segment-anything ``Sam`` model (for its image size).
        images: HxWx3 uint8 RGB images.
        preprocess: the checkpoint's preprocessing profile.

    Returns:
        H'xW'x3 uint8 images at the profile's input size (longest side = the encoder's image
        size for ``sam``; the full square for ``medsam``).
    """
    size = sam.image_encoder.img_size
    return [preprocess.resize(image, size) for image in images]


@torch.no_grad()
def encode_images(
    sam: torch.nn.Module,
    images: Sequence[np.ndarray],
    batch_size: int | BatchSize = 4,
    *,
    precision: str = "fp32",
    encoder: Any = None,
    resized: Sequence[np.ndarray] | None = None,
    preprocess: SamPreprocess = SAM_PREPROCESS,
) -> list[ImageEmbedding]:
    """Encode HxWx3 uint8 RGB images with SAM's image encoder, ``batch_size`` at a time.

    Preprocessing is the checkpoint family's (:mod:`salip.models.sam_preprocess`); for the
    ``sam`` profile it is segment-anything's own (``ResizeLongestSide.apply_image`` then
    ``Sam.preprocess``), so at fp32 embeddings equal ``SamPredictor.set_image``'s.

    Args:
        sam: segment-anything ``Sam`` model.
        images: HxWx3 uint8 RGB images (sizes may differ).
        batch_size: images per encoder call; a :class:`BatchSize` is halved in place when
            the device runs out of memory (the batch is retried, down to 1), so later calls
            start from the smaller size, and calibrated on its first call when it is auto.
        precision: "fp32", or "bf16"/"fp16" autocast (resolved, see
            :mod:`salip.models.precision`); features come back as float32.
        encoder: the module to run instead of ``sam.image_encoder`` (e.g.
            :func:`fast_encoder`'s); same inputs and outputs.
        resized: :func:`resize_for_encoder` of ``images`` with the same ``preprocess``,
            when already computed (e.g. in a prefetch thread).
        preprocess: the checkpoint's preprocessing profile (``LoadedSam.preprocess``),
            recorded on each embedding.

    Returns:
        One :class:`ImageEmbedding` per image, in order; features 1xCxhxw float32.

    Raises:
        OutOfMemoryError: out of memory even with one image per batch.
    """
    from salip.models.precision import autocast

    size = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
    if resized is None:
        resized = resize_for_encoder(sam, images, preprocess)
    elif len(resized) != len(images):
        raise ValueError(f"{len(resized)} resized images for {len(images)} images.")
    device = sam.device
    out: list[ImageEmbedding] = []
    start = 0
    while start < len(images):
        chunk = images[start : start + size.value]
        tensors, sizes = [], []
        for image, small in zip(chunk, resized[start : start + size.value]):
            tensor = torch.as_tensor(small, device=device).permute(2, 0, 1).contiguous()
            sizes.append((tuple(tensor.shape[-2:]), tuple(image.shape[:2])))
            tensors.append(preprocess.normalise(sam, tensor[None].float())[0])

        def run() -> torch.Tensor:
            with autocast(device, precision):
                module = sam.image_encoder if encoder is None else encoder
                return module(torch.stack(tensors)).float()  # noqa: B023 - called right here

        features = size.attempt(run, len(chunk), device, "encoding", "slices")
        if features is None:
            continue
        for i, (input_size, original_size) in enumerate(sizes):
            out.append(ImageEmbedding(features[i : i + 1], input_size, original_size, preprocess))
        start += len(chunk)
    return out


@torch.no_grad()
def decode(
    sam: torch.nn.Module,
    embedding: ImageEmbedding,
    *,
    points: torch.Tensor | None = None,
    boxes: torch.Tensor | None = None,
    multimask_output: bool = True,
    point_labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode prompts against one embedding, as ``SamPredictor.predict_torch`` does, with
    the prompts and masks mapped by the embedding's preprocessing profile.

    Args:
        points: BxPx2 float XY point prompts in pixels of the *original* slice.
        boxes: Bx4 float XYXY box prompts in pixels of the original slice.
        multimask_output: three masks per prompt (True) or one (False).
        point_labels: BxP int, 1 foreground and 0 background (SAM's labels); None: all
            foreground.

    Returns:
        (logits BxCxHxW at the original size, predicted IoU BxC).
    """
    profile, size = embedding.preprocess, sam.image_encoder.img_size
    point_arg = None
    if points is not None:
        coords = profile.coords(points, embedding.original_size, size)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        if point_labels is not None:
            labels = point_labels.to(device=coords.device, dtype=torch.int)
        point_arg = (coords, labels)
    box_arg = None
    if boxes is not None:
        box_arg = profile.boxes(boxes, embedding.original_size, size)
    sparse, dense = sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=embedding.features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask_output,
    )
    logits = profile.masks(sam, low_res, embedding.input_size, embedding.original_size)
    return logits, iou


@torch.no_grad()
def decode_points_across(
    sam: torch.nn.Module,
    features: torch.Tensor,
    owner: torch.Tensor,
    points: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    preprocess: SamPreprocess = SAM_PREPROCESS,
    runtime: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode single-point prompts that belong to different slices, in one decoder call.

    All slices must share ``input_size``, ``original_size`` and ``preprocess`` (true within
    a volume).
    Equivalent, prompt by prompt, to :func:`decode` with ``multimask_output=True`` against
    each prompt's own slice embedding.

    Args:
        sam: segment-anything ``Sam`` model.
        features: BxCxhxw embeddings of the B slices.
        owner: N int64 index into ``features`` of each prompt's slice.
        points: Nx1x2 float XY point prompts in pixels of the original slice (foreground).
        input_size: (H', W') of the slices inside the encoder input.
        original_size: (H, W) of the slices.
        preprocess: the profile the slices were encoded with.
        runtime: a :class:`~salip.models.sam_onnx.OnnxSam` to run the mask decoder on
            (``LoadedSam.onnx``); None: torch.

    Returns:
        (logits NxMxHxW at the original size, predicted IoU NxM); M multimask outputs.
    """
    coords = preprocess.coords(points, original_size, sam.image_encoder.img_size)
    labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
    sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    if runtime is not None:
        low_res, iou = runtime.predict_masks(features, owner, sparse)
    else:
        low_res, iou = predict_masks_shared(
            sam.mask_decoder,
            features,
            owner.to(features.device),
            sam.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
        )
    # MaskDecoder.forward's multimask selection: drop the single-mask output.
    low_res, iou = low_res[:, 1:], iou[:, 1:]
    logits = preprocess.masks(sam, low_res, input_size, original_size)
    return logits, iou
