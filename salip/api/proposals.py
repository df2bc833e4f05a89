"""``salip.propose``: SAM's everything-mode proposals of one image or one volume slice."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from salip.api.factory import load_models
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError
from salip.io import Volume, read_input
from salip.io.orientation import source_slice_indices
from salip.io.slicing import Intensity, choose_intensity, iter_slices, n_slices, to_uint8

__all__ = ["propose"]


def _proposal_intensity(volume: Volume, cfg: SegmentConfig) -> Intensity:
    """The intensity mapping for proposals, which need no modality for 8-bit 2D images.

    Descriptions are never read here, so an 8-bit image whose modality cannot be told is
    shown to SAM as stored, as :func:`choose_intensity` would for any modality.
    """
    try:
        return choose_intensity(volume, [], cfg.slicing)
    except ConfigError:
        if volume.is_2d and volume.data.dtype == np.uint8 and cfg.slicing.window is None:
            return Intensity("unknown", "unchanged", modality_from="not needed")
        raise


def propose(
    source: str | Path,
    *,
    slice_index: int | None = None,
    config: SegmentConfig | None = None,
    **options: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Everything-mode proposals of one image or one volume slice.

    Args:
        source: input path, or a :class:`~salip.io.Volume` already read with
            :func:`salip.io.read_input` (outputs are then named after its ``path``).
        slice_index: slice along ``axis``, as indexed in the input file (default: middle).
        config: settings; ``options`` apply on top (same names as :func:`segment`'s).

    Returns:
        (records as segment-anything's ``amg.py --convert-to-rle`` writes them, info dict
        with the slice used and the model identity).
    """
    from salip.engines.everything_mode import generate_proposals_batch
    from salip.models.sam_runtime import encode_images

    cfg = (config or SegmentConfig()).replace(**options)
    volume = read_input(Path(source), **dataclasses.asdict(cfg.input))
    axis = cfg.slicing.axis
    total = n_slices(volume, axis)
    if slice_index is None:
        slice_index = total // 2
    if not 0 <= slice_index < total:
        raise ConfigError(f"--slice {slice_index} is out of range: the input has {total} slices.")
    # The input->canonical index map along one axis is its own inverse (a flip or identity).
    _, (canonical_index,) = source_slice_indices(volume, axis, [slice_index])
    intensity = _proposal_intensity(volume, cfg)
    volume8 = to_uint8(volume, intensity, cfg.slicing)
    image = next(img for i, img in iter_slices(volume8, volume.is_2d, axis) if i == canonical_index)
    sam = load_models(cfg.models, clip=False).sam  # on the run's --runtime
    encoder = None if sam.onnx is None else sam.onnx.encoder
    (embedding,) = encode_images(sam.model, [image], 1, encoder=encoder, preprocess=sam.preprocess)
    (proposals,) = generate_proposals_batch(sam.model, [embedding], cfg.proposals, runtime=sam.onnx)
    records = proposals.to_records()
    info = {
        "slice": slice_index,
        "axis": axis,
        "sam": sam.identity(),
        "image_size": list(image.shape[:2]),
    }
    return records, info
