"""Training data for the head: benchmark datasets -> cached SAM embeddings and targets.

Cases come from the benchmark's dataset kinds (:func:`salip.apps.bench.datasets.load_dataset`).
Each case is read and sliced exactly as :func:`salip.segment` does (``read_input``,
``choose_intensity``, ``to_uint8``, ``body_slices``, ``iter_slices``), so the head trains on
the slices it will see. The intensity mapping is chosen with the head's classes as the
organs, so all CT cases of a run share one window.

A sample is one slice: its cached SAM embedding, and per class the reference brought into
the head's output frame (:func:`to_head_frame`), plus which classes its dataset labels.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import InterpolationMode, resize
from tqdm.auto import tqdm

from salip.apps.bench.datasets import DatasetCase
from salip.apps.training.cache import DiskEmbeddingCache, load_embedding
from salip.core.config import SegmentConfig
from salip.core.hashing import file_sha256
from salip.core.organs import get_organ
from salip.io import read_input, to_canonical
from salip.io.slicing import (
    body_slices,
    choose_intensity,
    display_slice,
    iter_slices,
    n_slices,
    to_uint8,
)
from salip.models.head import UPSCALE
from salip.models.sam_preprocess import SAM_PREPROCESS, SamPreprocess

__all__ = [
    "EMPTY_SHARE",
    "build_samples",
    "sampling_weights",
    "SliceDataset",
    "SliceSample",
    "split_cases",
    "to_head_frame",
]

logger = logging.getLogger(__name__)

#: Share of the training draws given to slices showing none of their labelled classes.
EMPTY_SHARE = 0.1


@dataclass(frozen=True)
class SliceSample:
    """One training slice.

    Attributes:
        case: ``dataset/case_id`` of its case (the unit of the train/validation split).
        index: slice index along the slicing axis of the canonical volume (0 for 2D).
        embedding: its cache file (:func:`salip.apps.training.cache.load_embedding`).
        target: Kxhxw float16 reference per class in the head's frame (area fractions).
        valid: hxw bool, True where the frame shows the image rather than padding.
        labelled: K bool, True for the classes the case's dataset labels.
    """

    case: str
    index: int
    embedding: Path
    target: torch.Tensor
    valid: torch.Tensor
    labelled: torch.Tensor

    @property
    def present(self) -> torch.Tensor:
        """K bool: labelled classes with reference pixels in this slice."""
        return self.labelled & (self.target.flatten(1).amax(dim=1) > 0)


def to_head_frame(
    masks: np.ndarray, img_size: int, preprocess: SamPreprocess = SAM_PREPROCESS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring display-slice masks into the 1/4 frame of SAM's encoder input, the head's
    output frame.

    The inverse of what the preprocessing profile does to logits (for ``sam``,
    ``Sam.postprocess_masks``): resize to the image's size inside the encoder input (for
    ``sam`` the longest side to ``img_size``, ``ResizeLongestSide``; for ``medsam`` the
    whole square; nearest neighbour), pad right and bottom to ``img_size`` square, then
    average 4x4 blocks.

    Args:
        masks: KxHxW bool masks in the display slice's pixels.
        img_size: SAM's input size (``sam.image_encoder.img_size``, 1024 for real SAM).
        preprocess: the SAM's preprocessing profile.

    Returns:
        (Kxsxs float32 area fraction of each class per pixel, sxs bool valid region:
        pixels covering any image rather than only padding), s = img_size / 4.
    """
    h, w = masks.shape[1:]
    size = preprocess.input_size((h, w), img_size)
    tensor = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))
    resized = resize(tensor, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
    pad = (0, img_size - size[1], 0, img_size - size[0])
    padded = F.pad(resized.float(), pad)
    target = F.avg_pool2d(padded[None], UPSCALE)[0]
    inside = F.pad(torch.ones(1, *size), pad)
    valid = F.avg_pool2d(inside[None], UPSCALE)[0, 0] > 0
    return target, valid


def _case_samples(
    case: DatasetCase, classes: Sequence[str], config: SegmentConfig, cache: DiskEmbeddingCache
) -> tuple[list[SliceSample], dict[str, Any]]:
    volume = read_input(case.image, channel=case.channel)
    if case.modality and config.slicing.modality == "auto":
        config = config.replace(modality=case.modality)
    slicing = config.slicing
    intensity = choose_intensity(volume, [get_organ(c) for c in classes], slicing)
    volume8 = to_uint8(volume, intensity, slicing)
    axis = slicing.axis
    if slicing.skip_empty:
        keep = body_slices(volume, volume8, intensity, axis)
    else:
        keep = np.ones(n_slices(volume, axis), dtype=bool)
    slices = [(i, image) for i, image in iter_slices(volume8, volume.is_2d, axis) if keep[i]]
    labelled_names = [c for c in classes if c in case.organs]
    references = {
        name: to_canonical(mask, volume.geometry)
        for name, mask in case.references(labelled_names).items()
    }
    base_key = {
        "image_sha256": file_sha256(case.image),
        "channel": case.channel,
        "axis": axis,
        "intensity": dataclasses.asdict(intensity),
        "percentiles": [slicing.percentile_low, slicing.percentile_high],
    }
    paths = cache.ensure(
        [{**base_key, "index": int(i)} for i, _ in slices], [image for _, image in slices]
    )
    labelled = torch.tensor([c in references for c in classes])
    img_size = int(cache.sam.model.image_encoder.img_size)
    samples = []
    for (index, image), path in zip(slices, paths, strict=True):
        masks = np.zeros((len(classes), *image.shape[:2]), dtype=bool)
        for k, name in enumerate(classes):
            if name in references:
                masks[k] = display_slice(references[name], volume.is_2d, axis, index)
        target, valid = to_head_frame(masks, img_size, cache.sam.preprocess)
        samples.append(SliceSample(case.key, int(index), path, target.half(), valid, labelled))
    info = {
        "case": case.key,
        "image": str(case.image),
        "labelled": labelled_names,
        "slices": len(samples),
        "intensity": dataclasses.asdict(intensity),
    }
    return samples, info


def build_samples(
    cases: Sequence[DatasetCase],
    classes: Sequence[str],
    config: SegmentConfig,
    cache: DiskEmbeddingCache,
    *,
    progress: bool = False,
) -> tuple[list[SliceSample], list[dict[str, Any]]]:
    """Every body slice of every case as a :class:`SliceSample`, embeddings cached.

    Args:
        cases: the cases (from :func:`salip.apps.bench.datasets.load_dataset`).
        classes: the head's classes (vocabulary organ names), in output order.
        config: slicing settings (axis, window, modality, percentiles, skip_empty).
        cache: where embeddings are read from or encoded into.
        progress: show a progress bar over cases.

    Returns:
        (samples in case order then slice order, one JSON-ready description per case:
        key, image, labelled classes, slice count, intensity mapping).
    """
    samples: list[SliceSample] = []
    infos: list[dict[str, Any]] = []
    for case in tqdm(cases, desc="embeddings", unit="case", disable=not progress):
        case_samples, info = _case_samples(case, classes, config, cache)
        samples += case_samples
        infos.append(info)
    return samples, infos


def split_cases(keys: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split case keys (patients) into (train, validation), seeded.

    ``round(val_fraction * n)`` cases go to validation, at least one when the fraction is
    positive and at most ``n - 1``; a single case gives no validation (with a warning).
    """
    unique = sorted(set(keys))
    if val_fraction <= 0:
        return unique, []
    if len(unique) < 2:
        logger.warning(
            "only %d case: training without validation (add cases to validate)", len(unique)
        )
        return unique, []
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    shuffled = unique[:]
    random.Random(seed).shuffle(shuffled)
    val = sorted(shuffled[:n_val])
    return [k for k in unique if k not in val], val


def sampling_weights(
    samples: Sequence[SliceSample], empty_share: float = EMPTY_SHARE
) -> torch.Tensor:
    """Per-slice draw weights: every class equally often, small organs oversampled.

    Each class gets the same total weight, spread evenly over the slices that show it, so
    an organ seen in few slices (a small one) has each of its slices drawn more often; a
    slice showing several classes adds their shares. Slices showing none of their labelled
    classes together get ``empty_share`` of the draws (so the head also sees negatives).

    Returns:
        N float64 weights (not normalised), for ``torch.utils.data.WeightedRandomSampler``.
    """
    if not samples:
        return torch.zeros(0, dtype=torch.float64)
    present = torch.stack([s.present for s in samples]).to(torch.float64)  # NxK
    per_class = present.sum(dim=0)
    shares = torch.where(per_class > 0, 1.0 / per_class.clamp_min(1.0), torch.zeros_like(per_class))
    weights = present @ shares
    empty = weights == 0
    if empty.all():
        return torch.ones(len(samples), dtype=torch.float64)
    if empty.any():
        total = float(weights.sum())
        weights[empty] = empty_share * total / ((1.0 - empty_share) * int(empty.sum()))
    return weights


class SliceDataset(torch.utils.data.Dataset):
    """Samples as tensors, embeddings read from the cache on access.

    Items are ``(features CxHxW float32, target Kxhxw float32, valid hxw bool,
    labelled K bool)``; the default collate stacks them into a batch.
    """

    def __init__(self, samples: Sequence[SliceSample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        sample = self.samples[i]
        features = load_embedding(sample.embedding).features[0]
        return features, sample.target.float(), sample.valid, sample.labelled
