"""``salip bench-units``: SAM's unit costs, the factors of a strategy's predicted cost.

A strategy's cost is predicted as counts x unit costs. This module measures the three units,
in one process, on one device, the way salip runs them:

1. **encoder**: SAM's image encoder on one slice (:func:`salip.models.sam_runtime.encode_images`
   with salip's fused-attention encoder, batch 1; on CUDA also per slice at the auto batch);
2. **everything mode**: the point grid decoded against one slice's embedding, with salip's
   filtering (predicted IoU, stability, mask-to-box, box NMS), as
   :func:`salip.engines.everything_mode.generate_proposals` runs it;
3. **box prompt**: one box decoded with ``multimask_output=False``
   (:func:`salip.engines.refiner.refine_with_boxes`), one box per call; also all boxes in one
   call, for comparison.

Without a checkpoint the model is a RANDOM-weight SAM of the asked size, built by
segment-anything's own ``sam_model_registry`` (full encoder, 256-d decoder): the compute does
not depend on weight values, but the filtering does a little, because random weights give
masks that rarely pass the default IoU and stability thresholds (``everything_proposals``
says how many were kept). The slices are a synthetic CT phantom, soft-tissue windowed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salip.apps.bench.devtime import hardware, sync, timed
from salip.apps.bench.speed import synthetic_ct
from salip.core.config import ProposalConfig
from salip.core.errors import ConfigError
from salip.core.hashing import file_sha256
from salip.engines.encoder import encoder_batch
from salip.engines.everything_mode import decoder_batch, generate_proposals_batch
from salip.engines.refiner import refine_with_boxes
from salip.io.slicing import apply_window, to_display
from salip.models.device import resolve_device
from salip.models.precision import resolve_precision
from salip.models.registry import SAM_CHECKPOINTS
from salip.models.sam import load_sam
from salip.models.sam_onnx import open_onnx_sam, resolve_runtime
from salip.models.sam_runtime import encode_images, fast_encoder
from salip.version import __version__

__all__ = [
    "MODEL_TYPES",
    "markdown_line",
    "measure_unit_costs",
    "phantom_slices",
]

logger = logging.getLogger(__name__)

#: The SAM sizes a random-weight model can be built as (segment-anything's registry names).
MODEL_TYPES = ("vit_b", "vit_l", "vit_h")


@dataclass
class _Model:
    """The SAM under test and where its weights came from."""

    model: Any  # segment_anything.modeling.Sam, eval mode, on the device
    model_type: str
    weights: str
    checkpoint: str | None = None
    sha256: str | None = None
    onnx: Any = None  # salip.models.sam_onnx.OnnxSam, for runtime "onnx"

    @property
    def runtime(self) -> str:
        return "torch" if self.onnx is None else "onnx"


@dataclass(frozen=True)
class _Config:
    """Everything-mode settings and the box-prompt count of a measurement."""

    proposals: Any  # salip.core.config.ProposalConfig
    box_prompts: int


@dataclass
class _Samples:
    """Seconds per slice (or per prompt) of each unit, one entry per slice."""

    encoder: list[float] = field(default_factory=list)
    everything: list[float] = field(default_factory=list)
    proposals: list[int] = field(default_factory=list)
    box: list[float] = field(default_factory=list)
    box_batched: list[float] = field(default_factory=list)


def _check(
    model_type: str | None, slices: int, image_size: int, points_per_side: int, box_prompts: int
) -> None:
    """ConfigError (one line, what to give instead) for a setting out of range."""
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ConfigError(
            f"unknown SAM model type '{model_type}'; use one of {', '.join(MODEL_TYPES)}."
        )
    for name, value, low in (
        ("slices", slices, 1),
        ("image size", image_size, 16),
        ("points per side", points_per_side, 1),
        ("box prompts", box_prompts, 1),
    ):
        if int(value) < low:
            raise ConfigError(f"{name} must be at least {low}, not {value}.")


def _load_model(
    sam_checkpoint: str | None, model_type: str | None, device: str, seed: int, runtime: str
) -> _Model:
    """A random-weight SAM of ``model_type`` (no checkpoint), or the checkpoint through
    salip's loader (``model_type`` then checks the file's architecture, None skips it).
    ``runtime`` "onnx" also opens its ONNX Runtime graphs: a checkpoint's from the cache,
    a random model's exported to a temporary folder."""
    if sam_checkpoint is None:
        from segment_anything import sam_model_registry

        kind = model_type or "vit_b"
        torch.manual_seed(seed)
        model = sam_model_registry[kind](checkpoint=None).eval().to(device)
        onnx = None
        if runtime == "onnx":
            with tempfile.TemporaryDirectory(prefix="salip-onnx-") as folder:
                onnx = open_onnx_sam(model, Path(folder) / "graphs", torch.get_num_threads())
        return _Model(model, kind, "random", onnx=onnx)

    loaded = load_sam(sam_checkpoint, device=device, model_type=model_type, runtime=runtime)
    sha = file_sha256(loaded.path)
    official = next((name for name, info in SAM_CHECKPOINTS.items() if info.sha256 == sha), None)
    weights = f"official {official}" if official else f"not official ({loaded.arch.name})"
    return _Model(loaded.model, loaded.arch.name, weights, str(loaded.path), sha, loaded.onnx)


def phantom_slices(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` HxWx3 uint8 slices (H = W = ``size`` pixels) of a synthetic CT phantom.

    Axial slices through the middle of :func:`salip.apps.bench.speed.synthetic_ct` (body,
    liver, spine, kidneys), soft-tissue window (width 400 HU, level 40 HU), in display
    orientation, grey repeated over three channels.
    """
    depth = 2 * count + 1
    hu, _ = synthetic_ct((size, size, depth), seed=seed)
    images = []
    for z in range(count // 2 + 1, count // 2 + 1 + count):
        grey = to_display(apply_window(hu[:, :, z], 400.0, 40.0))
        images.append(np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2)))
    return images


def _boxes(count: int, size: int, seed: int) -> Any:
    """``count`` different XYXY boxes (pixels) inside a ``size``-pixel slice, 1x4 each."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0.05, 0.6, size=(count, 2)) * size
    extent = rng.uniform(0.05, 0.35, size=(count, 2)) * size
    boxes = np.concatenate([low, np.minimum(low + extent, size - 1)], axis=1)
    return [torch.as_tensor(b[None], dtype=torch.float32) for b in boxes]


def _encoder_auto_batch(
    sam: Any, images: list[np.ndarray], device: str, precision: str
) -> tuple[int, float]:
    """CUDA: (auto encoder batch, seconds per slice at it), after a calibrating warm-up."""
    encoder = fast_encoder(sam)
    batch = encoder_batch(0, device)
    encode_images(sam, images[:1], batch, precision=precision, encoder=encoder)  # calibrates
    n = batch.value
    full = [images[i % len(images)] for i in range(n)]
    encode_images(sam, full, batch, precision=precision, encoder=encoder)  # warm at size n

    def run() -> Any:
        return encode_images(sam, full, batch, precision=precision, encoder=encoder)

    seconds, _ = timed(device, run)
    return n, seconds / n


def _measure_slices(
    loaded: _Model, images: list[np.ndarray], device: str, precision: str, config: Any, seed: int
) -> tuple[_Samples, int, int]:
    """Warm up, then time the three units on every slice.

    Returns:
        (the samples, the decoder's points per batch, the box prompts per slice).
    """
    sam, onnx = loaded.model, loaded.onnx
    encoder = fast_encoder(sam) if onnx is None else onnx.encoder
    batch = decoder_batch(config.proposals, device, loaded.runtime)  # kept, as salip does
    boxes = _boxes(config.box_prompts, images[0].shape[0], seed)
    stacked = torch.cat(boxes)

    def encode(image: np.ndarray) -> Any:
        return encode_images(sam, [image], 1, precision=precision, encoder=encoder)[0]

    # Warm-up: one encoder call, one decoder call (on CUDA it sizes the decoder batch).
    first = encode(images[0])
    warm = replace(config.proposals, points_per_side=min(8, config.proposals.points_per_side))
    generate_proposals_batch(sam, [first], warm, batch, runtime=onnx)
    refine_with_boxes(sam, first, boxes[0])
    sync(device)
    samples = _Samples()
    for index, image in enumerate(images):
        seconds, embedding = timed(device, lambda image=image: encode(image))
        samples.encoder.append(seconds)
        seconds, props = timed(
            device,
            lambda e=embedding: generate_proposals_batch(
                sam, [e], config.proposals, batch, runtime=onnx
            )[0],
        )
        samples.everything.append(seconds)
        samples.proposals.append(len(props))
        seconds, _ = timed(
            device, lambda e=embedding: [refine_with_boxes(sam, e, b) for b in boxes]
        )
        samples.box.append(seconds / len(boxes))
        seconds, _ = timed(device, lambda e=embedding: refine_with_boxes(sam, e, stacked))
        samples.box_batched.append(seconds / len(boxes))
        logger.info(
            "slice %d/%d: encoder %.3f s, everything %.3f s (%d proposals), box %.4f s/prompt",
            index + 1,
            len(images),
            samples.encoder[-1],
            samples.everything[-1],
            samples.proposals[-1],
            samples.box[-1],
        )
    return samples, batch.value, len(boxes)


def measure_unit_costs(
    *,
    sam_checkpoint: str | None = None,
    model_type: str | None = "vit_b",
    device: str = "auto",
    slices: int = 3,
    image_size: int = 512,
    points_per_side: int = 32,
    box_prompts: int = 16,
    precision: str = "auto",
    seed: int = 0,
    pred_iou_thresh: float | None = None,
    stability_score_thresh: float | None = None,
    runtime: str = "auto",
) -> dict[str, Any]:
    """Measure SAM's unit costs (seconds) on ``slices`` synthetic slices; return a result dict.

    Args:
        sam_checkpoint: a SAM checkpoint (file or official name, through
            :func:`salip.models.sam.load_sam`); None builds a RANDOM-weight SAM of
            ``model_type`` (seeded with ``seed``).
        model_type: vit_b, vit_l or vit_h. With a checkpoint it checks the file's
            architecture, and None reads it from the file.
        device: "auto", "cpu", "cuda" or "cuda:N".
        slices: slices timed; the result's costs are medians over them.
        image_size: slice height and width in pixels (encoded at SAM's 1024 after resizing).
        points_per_side: everything-mode grid (``points_per_side**2`` point prompts per slice).
        box_prompts: different boxes decoded per slice, one per decoder call.
        precision: encoder precision, "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16",
            "fp16"; decoding is always fp32, as in salip.
        seed: seeds the random weights, the phantom and the boxes.
        pred_iou_thresh, stability_score_thresh: everything-mode filters (None: salip's
            defaults, 0.88 and 0.95).
        runtime: what runs the encoder and the everything-mode decoder: "torch", "onnx"
            or "auto", as ``salip segment --runtime`` (box prompts run on torch).

    Returns:
        JSON-ready dict: ``encoder_s_per_slice``, ``everything_s_per_slice``,
        ``box_s_per_prompt`` (seconds, medians over slices), ``everything_over_encoder``,
        ``box_s_per_prompt_batched`` (all boxes in one call, per box),
        ``encoder_s_per_slice_auto_batch`` and ``encoder_auto_batch`` (CUDA only, else None),
        ``everything_proposals`` (median kept masks), ``samples`` (per slice), and the setup:
        date, device, hardware, torch, model_type, weights, image_size, points_per_side,
        points_per_batch, precision, ``load_average_1m_before`` (the machine's 1-minute load
        before the run: other processes' CPU use slows CPU timings), ...

    Raises:
        ConfigError: an unknown model type, device or precision, or a count out of range.
        ModelError: an unreadable checkpoint, or one that is not ``model_type``.
    """
    _check(model_type, slices, image_size, points_per_side, box_prompts)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    runtime = resolve_runtime(runtime, device, precision, False)
    filters = {"pred_iou_thresh": pred_iou_thresh, "stability_score_thresh": stability_score_thresh}
    proposals = ProposalConfig(
        points_per_side=points_per_side, **{k: v for k, v in filters.items() if v is not None}
    )
    config = _Config(proposals, box_prompts)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # others' CPU use
    sam = _load_model(sam_checkpoint, model_type, device, seed, runtime)
    images = phantom_slices(slices, image_size, seed)
    logger.info(
        "measuring %s (%s weights) on %s, %s", sam.model_type, sam.weights, device, precision
    )
    samples, per_batch, n_boxes = _measure_slices(sam, images, device, precision, config, seed)
    auto = (None, None)
    if device.startswith("cuda"):
        auto = _encoder_auto_batch(sam.model, images, device, precision)
    result = _result(sam, device, precision, proposals, images, samples, per_batch, n_boxes, auto)
    result["load_average_1m_before"] = load
    return result


def _result(
    sam: _Model,
    device: str,
    precision: str,
    proposals: Any,
    images: list[np.ndarray],
    samples: _Samples,
    per_batch: int,
    n_boxes: int,
    auto: tuple[int | None, float | None],
) -> dict[str, Any]:
    """The result dict of :func:`measure_unit_costs`."""
    encoder = statistics.median(samples.encoder)
    everything = statistics.median(samples.everything)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        **hardware(device),
        "torch": torch.__version__,
        "salip": __version__,
        "model_type": sam.model_type,
        "weights": sam.weights,
        "sam_checkpoint": sam.checkpoint,
        "sam_checkpoint_sha256": sam.sha256,
        "image_size": int(images[0].shape[0]),
        "slices": len(images),
        "points_per_side": proposals.points_per_side,
        "points_per_batch": per_batch,
        "pred_iou_thresh": proposals.pred_iou_thresh,
        "stability_score_thresh": proposals.stability_score_thresh,
        "box_prompts": n_boxes,
        "precision": precision,
        "runtime": sam.runtime,
        "encoder_s_per_slice": encoder,
        "everything_s_per_slice": everything,
        "box_s_per_prompt": statistics.median(samples.box),
        "box_s_per_prompt_batched": statistics.median(samples.box_batched),
        "everything_over_encoder": everything / encoder,
        "encoder_auto_batch": auto[0],
        "encoder_s_per_slice_auto_batch": auto[1],
        "everything_proposals": int(statistics.median(samples.proposals)),
        "samples": {
            "encoder_s": samples.encoder,
            "everything_s": samples.everything,
            "everything_proposals": samples.proposals,
            "box_s_per_prompt": samples.box,
            "box_s_per_prompt_batched": samples.box_batched,
        },
    }


def markdown_line(result: dict[str, Any]) -> str:
    """One row for a unit-cost table in ``benchmarks/RESULTS.md``.

    Columns: date | hardware | torch | SAM (weights) | slice px | grid (per batch) |
    precision (and runtime) | encoder s/slice | everything s/slice | box s/prompt |
    everything/encoder.
    """
    auto = ""
    if result.get("encoder_s_per_slice_auto_batch") is not None:
        auto = (
            f" ({result['encoder_s_per_slice_auto_batch']:.4g} at batch "
            f"{result['encoder_auto_batch']})"
        )
    grid = f"{result['points_per_side']}² ({result['points_per_batch']}/call)"
    return (
        f"| {result['date'][:10]} | {result['hardware']} | torch {result['torch']} | "
        f"{result['model_type']} ({result['weights']}) | {result['image_size']} | {grid} | "
        f"{result['precision']}, {result.get('runtime', 'torch')} | "
        f"{result['encoder_s_per_slice']:.4g}{auto} | "
        f"{result['everything_s_per_slice']:.4g} | {result['box_s_per_prompt']:.4g} | "
        f"{result['everything_over_encoder']:.3g} |"
    )
