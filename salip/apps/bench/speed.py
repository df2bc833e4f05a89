"""``salip bench-speed``: salip against the SaLIP reference cost structure, one process.

Both sides get the same device, checkpoints, slices and cascade settings (the paper's
scoring: cosine with the organ's descriptions, top-k in every slice; no laterality, no 3D
component filter), and both read the NIfTI file and write the mask inside their timing.

(A) **reference**, one slice at a time, as the SaLIP reference code runs:
    segment-anything's ``SamAutomaticMaskGenerator.generate`` (encoder, a decoder call per
    point batch, its filtering), the area filter and crops mask by mask in Python, open_clip
    with the description texts encoded again for every slice, then ``SamPredictor.set_image``
    (the slice encoded a second time) and one ``predict`` per box prompt. Always fp32.
(B) **salip**: :func:`salip.segment` with the loaded models (batched encoder, embeddings
    reused for the box prompts, text embedded once, body-less slices skipped, the chosen
    ``--precision`` and ``--runtime``: on CPU at fp32 the encoder and everything mode run
    on ONNX Runtime unless ``--runtime torch``).

Models are loaded once, outside both timings, and both sides are warmed up on one slice.
The agreement is the mean IoU between A's and B's masks over the slices B segmented where
either mask is non-empty (slices B skipped as body-less are left out and counted).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from segment_anything import SamAutomaticMaskGenerator, SamPredictor

from salip.api.factory import CaseInput, Models, build, load_models
from salip.api.pipeline import segment
from salip.apps.bench.devtime import DeviceTimer, hardware, peak_mb, reset_peak, rss_mb, sync
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError
from salip.core.hashing import file_sha256
from salip.core.organs import get_organ
from salip.core.prompts import load_prompts
from salip.core.timing import StageTimer
from salip.engines.area_filter import speck_pixels
from salip.engines.crops import expand_box, pad_to_square
from salip.engines.everything_mode import AUTO_PROMPTS
from salip.engines.scoring import select_top_k
from salip.io import read_input
from salip.io.orientation import display_pixel_mm, source_slice_indices, to_source_grid
from salip.io.slicing import AXES, choose_intensity, iter_slices, to_uint8
from salip.io.writing import write_json, write_mask
from salip.models.device import resolve_device
from salip.models.precision import resolve_precision
from salip.models.registry import SAM_CHECKPOINTS
from salip.models.sam_runtime import encode_images
from salip.strategies.assembly import put_slice
from salip.version import __version__

__all__ = [
    "markdown_line",
    "parse_shape",
    "run_speed",
    "synthetic_ct",
]

logger = logging.getLogger(__name__)


def parse_shape(text: str) -> tuple[int, int, int]:
    """ "512x512x200" -> (512, 512, 200).

    Raises:
        ConfigError: not three positive whole numbers joined by "x".
    """
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--shape '{text}': give three sizes like 512x512x200.")
    return shape  # type: ignore[return-value]


def synthetic_ct(shape: Sequence[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like phantom: XxYxZ int16 HU in RAS+ order, and its 4x4 affine (0.8x0.8x2.5 mm).

    Air (-1000) around an elliptic body (soft tissue, 40 HU, noise 10 HU) holding a liver-
    like ellipsoid (60 HU) on the patient's right, a spine (700 HU) and two kidney-like
    blobs (30 HU). Only for timing: its content is not anatomy.
    """
    nx, ny, nz = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, nx)[:, None, None]
    y = np.linspace(-1, 1, ny)[None, :, None]
    z = np.linspace(-1, 1, nz)[None, None, :]
    hu = np.full((nx, ny, nz), -1000.0, dtype=np.float32)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1.0
    hu[np.broadcast_to(body, hu.shape)] = 40.0
    # RAS: +x is the patient's left, so the liver sits at negative x.
    liver = ((x + 0.35) / 0.35) ** 2 + ((y - 0.1) / 0.35) ** 2 + (z / 0.8) ** 2 <= 1.0
    hu[liver] = 60.0
    spine = (x / 0.1) ** 2 + ((y + 0.45) / 0.1) ** 2 <= 1.0
    hu[np.broadcast_to(spine, hu.shape)] = 700.0
    for cx in (-0.3, 0.3):
        kidney = ((x - cx) / 0.1) ** 2 + ((y + 0.3) / 0.15) ** 2 + ((z + 0.3) / 0.3) ** 2 <= 1.0
        hu[kidney] = 30.0
    inside = np.broadcast_to(body, hu.shape)
    hu[inside] += rng.normal(0.0, 10.0, size=int(inside.sum())).astype(np.float32)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    return np.rint(hu).astype(np.int16), affine


def _reference_slice(
    image: np.ndarray,
    generator: Any,
    predictor: Any,
    clip: Any,
    descriptions: Sequence[str],
    config: Any,
    k: int,
    device: str,
    stages: DeviceTimer,
    floor: float,
) -> np.ndarray:
    """One slice the reference way; returns the HxW bool mask. ``floor``: the area
    filter's speck floor in pixels (salip's, so both sides filter alike)."""
    h, w = image.shape[:2]
    t = time.perf_counter()
    records = generator.generate(image)
    t = stages.add("amg", t)
    kept = [
        r for r in records if floor <= r["area"] and r["area"] / (h * w) <= config.area.max_area
    ]
    crops, boxes = [], []
    for record in kept:
        x, y, bw, bh = record["bbox"]
        box = np.array([x, y, x + bw, y + bh], dtype=np.float32)
        x0, y0, x1, y1 = expand_box(box, config.crops.crop_margin, h, w)
        region = image[y0:y1, x0:x1]
        if config.crops.crop_mode == "masked":
            region = region * record["segmentation"][y0:y1, x0:x1, None].astype(np.uint8)
        crops.append(pad_to_square(np.ascontiguousarray(region)))
        boxes.append(box)
    t = stages.add("filter_crops", t)
    mask = np.zeros((h, w), dtype=bool)
    if not crops:
        return mask
    with torch.no_grad():
        tokens = clip.tokenizer(list(descriptions)).to(device)
        text = clip.model.encode_text(tokens).float()
        text = text / text.norm(dim=-1, keepdim=True)
        text = text.mean(0)
        text = text / text.norm()
        batch = torch.stack([clip.preprocess(Image.fromarray(c)) for c in crops]).to(device)
        emb = clip.model.encode_image(batch).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        picked = select_top_k(emb @ text, k)
    t = stages.add("clip", t)
    predictor.set_image(image)
    for index in picked:
        masks, _, _ = predictor.predict(box=boxes[index], multimask_output=False)
        mask |= masks[0].astype(bool)
    stages.add("refine", t)
    return mask


def _run_reference(
    path: Path, out: Path, organ: Any, models: Any, descriptions: Sequence[str], config: Any
) -> tuple[np.ndarray, dict[str, float]]:
    """(A): read, slice, the per-slice reference loop, assemble, write. Canonical mask back."""
    sam, clip, device = models
    p = config.proposals
    generator = SamAutomaticMaskGenerator(
        sam.model,
        points_per_side=p.points_per_side,
        points_per_batch=p.points_per_batch or AUTO_PROMPTS,  # auto: the generator's default
        pred_iou_thresh=p.pred_iou_thresh,
        stability_score_thresh=p.stability_score_thresh,
        stability_score_offset=p.stability_score_offset,
        box_nms_thresh=p.box_nms_thresh,
        min_mask_region_area=p.min_mask_region_area,
        output_mode="binary_mask",
    )
    predictor = SamPredictor(sam.model)
    stages = DeviceTimer(device)
    t = time.perf_counter()
    volume = read_input(path)
    intensity = choose_intensity(volume, [organ], config.slicing)
    volume8 = to_uint8(volume, intensity, config.slicing)
    t = stages.add("io", t)
    canonical = np.zeros(volume.data.shape, dtype=bool)
    axis = config.slicing.axis
    pixel_mm = display_pixel_mm(volume.spacing, axis)
    for index, image in iter_slices(volume8, False, axis):
        floor = speck_pixels(config.area, image.shape[:2], pixel_mm)
        mask = _reference_slice(
            image,
            generator,
            predictor,
            clip,
            descriptions,
            config,
            organ.top_k,
            device,
            stages,
            floor,
        )
        put_slice(canonical, index, axis, mask)
    t = time.perf_counter()
    write_mask(out, to_source_grid(canonical.astype(np.uint8), volume.geometry), volume.geometry)
    stages.add("io", t)
    return canonical, dict(stages.seconds)


def _agreement(
    reference: np.ndarray, salip_mask: np.ndarray, axis: int, segmented: np.ndarray
) -> float | None:
    """Mean per-slice IoU over segmented slices where either mask is non-empty."""
    ious = []
    for index in np.nonzero(segmented)[0]:
        a = np.take(reference, index, axis=axis)
        b = np.take(salip_mask, index, axis=axis)
        union = np.count_nonzero(a | b)
        if union:
            ious.append(np.count_nonzero(a & b) / union)
    return float(np.mean(ious)) if ious else None


@dataclass
class _Setup:
    """What every timed run shares: the input file, the config and the loaded models."""

    work: Path
    path: Path
    source: str
    shape: list[int]
    modality: str
    config: Any
    target: Any
    device: str
    precision: str
    sam: Any
    clip: Any
    descriptions: Sequence[str]


@dataclass
class _Timed:
    """One timed run: wall seconds, seconds per stage, and the peak memory after it."""

    seconds: float
    stages: dict[str, float]
    peak_device_mb: float | None
    rss_mb: float


def run_speed(
    *,
    input: str | Path | None = None,
    shape: str | Sequence[int] | None = None,
    organ: str = "liver",
    extra_organs: Sequence[str] = (),
    json_path: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Time the reference structure and salip on one volume; return the result dict.

    Args:
        input: a NIfTI volume; or ``shape`` ("512x512x200") for a synthetic CT phantom.
        organ: the organ to segment.
        extra_organs: more organs for a third, salip-only run of ``organ`` plus these, to
            measure what several organs in one run cost (``multi_organ_s`` and
            ``multi_organ_ratio``, its time over the one-organ time).
        json_path: also write the result there as JSON.
        **options: salip config fields (``sam_checkpoint``, ``clip_model``,
            ``clip_pretrained``, ``device``, ``precision``, ``points_per_side``, ...).

    Returns:
        ``reference_s``, ``salip_s``, ``ratio``, ``agreement_iou``, ``stages``,
        ``reference_stages``, ``device``, ``precision``, ``shape``, ``sam_checkpoint_sha256``,
        ``slices``, ``skipped_slices``, slices/s, peak memory, versions and settings;
        ``strategy`` and ``work`` (the strategy's counts: encoded slices, everything-mode
        slices, point and box prompts).

    Raises:
        ConfigError: neither or both of ``input`` and ``shape``; bad option values.
    """
    if (input is None) == (shape is None):
        raise ConfigError("give either --input PATH or --shape XxYxZ (a synthetic volume).")
    settings = {
        "scoring": "salip",
        "laterality": False,
        "largest_component": False,
        **options,
    }
    config = SegmentConfig().replace(**settings)
    target = get_organ(organ)
    device = resolve_device(config.models.device)
    precision = resolve_precision(config.models.precision, device)
    with tempfile.TemporaryDirectory(prefix="salip-speed-") as tmp:
        setup = _prepare(Path(tmp), input, shape, config, target, device, precision)
        result, salip = _time_salip(setup)
        multi = _time_multi_organ(setup, extra_organs)
        reference, ref = _time_reference(setup)
        compared = _compare_masks(setup, result, reference)
    payload = _result_dict(setup, settings, salip, ref, multi, compared)
    payload["strategy"] = result.report["strategy"]["name"]
    payload["work"] = result.report["strategy"].get("counts", {})
    if json_path is not None:
        write_json(Path(json_path), payload)
    return payload


def _prepare(
    work: Path,
    input: str | Path | None,
    shape: str | Sequence[int] | None,
    config: Any,
    target: Any,
    device: str,
    precision: str,
) -> _Setup:
    """Write the phantom (or take ``input``), probe it, load the models and warm them up."""
    from salip.io.slicing import choose_intensity

    if input is None:
        dims = parse_shape(shape) if isinstance(shape, str) else tuple(shape)
        data, affine = synthetic_ct(dims)
        path = work / f"synthetic_{'x'.join(map(str, dims))}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), path)
        source = f"synthetic {'x'.join(map(str, dims))}"
    else:
        path, source = Path(input), str(input)
    probe = read_input(path)
    modality = choose_intensity(probe, [target], config.slicing).modality
    shape_out = list(probe.geometry.shape)
    del probe

    # As salip loads them: B runs on the run's --runtime (auto: ONNX Runtime on CPU at
    # fp32); A uses the torch model.
    models = load_models(config.models, clip=True)
    sam, clip = models.sam, models.clip
    prompts = load_prompts(target, modality, config.scoring.prompts_dir)
    # Warm-up (CUDA context, kernels) on one dummy slice, outside both timings.
    dummy = np.zeros((64, 64, 3), dtype=np.uint8)
    encode_images(sam.model, [dummy], 1, precision=precision, preprocess=sam.preprocess)
    sync(device)
    return _Setup(
        work=work,
        path=path,
        source=source,
        shape=shape_out,
        modality=modality,
        config=config,
        target=target,
        device=device,
        precision=precision,
        sam=sam,
        clip=clip,
        descriptions=prompts.descriptions,
    )


def _time_salip(setup: _Setup) -> tuple[Any, _Timed]:
    """(B): the one-organ salip run; its result and timing (cascade stages added in)."""
    s, device = setup, setup.device
    timer = StageTimer()
    reset_peak(device)
    start = time.perf_counter()
    case = CaseInput((s.target,), s.modality, is_2d=False)
    built = build("cascade", Models(s.sam, s.clip, device), s.config, case, timer)
    result = segment(
        s.path,
        organs=[s.target.name],
        output=s.work / "salip.nii.gz",
        config=s.config,
        segmenter=built.strategy,
    )
    sync(device)
    seconds = time.perf_counter() - start
    peak, rss = peak_mb(device), rss_mb()
    stages = {**result.report["timings_s"]}
    for name, stage_s in timer.seconds.items():
        stages[name] = round(stages.get(name, 0.0) + stage_s, 4)
    return result, _Timed(seconds, stages, peak, rss)


def _time_multi_organ(setup: _Setup, extra_organs: Sequence[str]) -> tuple[list[Any], float | None]:
    """The salip run of the organ plus ``extra_organs`` (none without them): organs, seconds."""
    if not extra_organs:
        return [], None
    s = setup
    multi_organs = [s.target, *(get_organ(o) for o in extra_organs)]
    multi_organs = list({o.name: o for o in multi_organs}.values())
    start = time.perf_counter()
    case = CaseInput(tuple(multi_organs), s.modality, is_2d=False)
    built = build("cascade", Models(s.sam, s.clip, s.device), s.config, case)
    segment(
        s.path,
        organs=[o.name for o in multi_organs],
        output=s.work / "salip_multi.nii.gz",
        config=s.config,
        segmenter=built.strategy,
    )
    sync(s.device)
    return multi_organs, time.perf_counter() - start


def _time_reference(setup: _Setup) -> tuple[np.ndarray, _Timed]:
    """(A): the reference run; its canonical mask and timing."""
    s = setup
    reset_peak(s.device)
    start = time.perf_counter()
    reference, reference_stages = _run_reference(
        s.path,
        s.work / "reference.nii.gz",
        s.target,
        (s.sam, s.clip, s.device),
        s.descriptions,
        s.config,
    )
    sync(s.device)
    seconds = time.perf_counter() - start
    return reference, _Timed(seconds, reference_stages, peak_mb(s.device), rss_mb())


def _compare_masks(
    setup: _Setup, result: Any, reference: np.ndarray
) -> tuple[float | None, int, list[int]]:
    """Agreement of salip's mask with the reference's, the slice count and skipped slices."""
    from salip.io import read_input, to_canonical

    config = setup.config
    volume = read_input(setup.path)
    salip_mask = to_canonical(result.masks[setup.target.name].astype(bool), volume.geometry)
    ax = AXES[config.slicing.axis]
    skipped = result.report["slicing"]["skipped_slices"]  # file indices
    _, in_file = source_slice_indices(volume, config.slicing.axis, range(volume.data.shape[ax]))
    segmented = ~np.isin(in_file, skipped)
    agreement = _agreement(reference, salip_mask, ax, segmented)
    return agreement, int(volume.data.shape[ax]), skipped


def _result_dict(
    setup: _Setup,
    settings: dict[str, Any],
    salip: _Timed,
    ref: _Timed,
    multi: tuple[list[Any], float | None],
    compared: tuple[float | None, int, list[int]],
) -> dict[str, Any]:
    """The result dict: the run's setup, the checkpoint's identity, timings and agreement."""
    s, device = setup, setup.device
    multi_organs, multi_s = multi
    agreement, n, skipped = compared
    checkpoint = Path(s.sam.path)
    sha = file_sha256(checkpoint)
    official = next((name for name, info in SAM_CHECKPOINTS.items() if info.sha256 == sha), None)
    machine = hardware(device)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "input": s.source,
        "shape": s.shape,
        "organ": s.target.name,
        "device": device,
        "gpu": machine["gpu"],
        "cpu_threads": machine["cpu_threads"],
        "precision": s.precision,
        "runtime": s.sam.runtime,
        "reference_runtime": "torch",
        "reference_precision": "fp32",
        "sam_checkpoint": str(checkpoint),
        "sam_checkpoint_sha256": sha,
        "sam_weights": f"official {official}" if official else f"not official ({s.sam.arch.name})",
        "clip_model": s.config.models.clip_model,
        "reference_s": round(ref.seconds, 3),
        "salip_s": round(salip.seconds, 3),
        "ratio": round(ref.seconds / salip.seconds, 2) if salip.seconds > 0 else None,
        "agreement_iou": None if agreement is None else round(agreement, 4),
        "multi_organs": [o.name for o in multi_organs],
        "multi_organ_s": None if multi_s is None else round(multi_s, 3),
        "multi_organ_ratio": None if multi_s is None else round(multi_s / salip.seconds, 3),
        "slices": n,
        "skipped_slices": len(skipped),
        "reference_slices_per_s": round(n / ref.seconds, 2),
        "salip_slices_per_s": round(n / salip.seconds, 2),
        "stages": salip.stages,
        "reference_stages": {k: round(v, 4) for k, v in ref.stages.items()},
        "peak_device_mb": {"salip": salip.peak_device_mb, "reference": ref.peak_device_mb},
        "peak_host_rss_mb": {
            "after_salip": round(salip.rss_mb, 1),
            "after_reference": round(ref.rss_mb, 1),
        },
        "settings": {k: v for k, v in settings.items() if k not in ("sam_checkpoint",)},
        "versions": {"salip": __version__, "torch": torch.__version__},
    }


def markdown_line(result: dict[str, Any]) -> str:
    """One row for ``benchmarks/RESULTS.md``'s table."""
    hardware = result["gpu"] or f"CPU ({result['cpu_threads']} threads)"
    agreement = "–" if result["agreement_iou"] is None else f"{result['agreement_iou']:.3f}"
    strategy = (
        f", {result['strategy']} strategy" if result.get("strategy", "slices") != "slices" else ""
    )
    return (
        f"| {result['date'][:10]} | {hardware} | torch {result['versions']['torch']} | "
        f"{result['sam_weights']} | {result['input']} ({'x'.join(map(str, result['shape']))}"
        f"{strategy}) | "
        f"{result['precision']} | {result['reference_s']:.2f} | {result['salip_s']:.2f} | "
        f"{result['ratio']}× | {agreement} |"
    )
