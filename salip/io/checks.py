"""Checks shared by the readers: voxel count and plane size limits, non-finite voxels, and
exceptions as one-line reasons."""

from __future__ import annotations

import logging

import numpy as np

from salip.core.errors import InputError
from salip.io.volume import Volume

__all__ = [
    "MIN_SIDE_PX",
    "NONFINITE_CHUNK",
    "SAM_LONG_SIDE_PX",
    "check_plane_size",
    "check_voxels",
]

# One logger for the whole package, as when it was one module (log lines and filters
# name "salip.io").
logger = logging.getLogger("salip.io")

#: Voxels per chunk when counting and replacing non-finite values (16 MiB of float32).
NONFINITE_CHUNK = 2**22

#: Smallest side, in pixels, of a 2D image or slice salip segments; also the smallest short
#: side after SAM resizes the long side to :data:`SAM_LONG_SIDE_PX` (so at most 64:1).
MIN_SIDE_PX = 16

#: SAM resizes every image so that its long side has this many pixels.
SAM_LONG_SIDE_PX = 1024


def _reason(exc: BaseException) -> str:
    """An exception as one short line, "Type: message" (library messages span lines)."""
    text = " ".join(str(exc).split())
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_voxels(count: int, max_voxels: int, what: str) -> None:
    """Refuse ``count`` voxels (as claimed by a header, before reading) over ``max_voxels``.

    Args:
        count: voxels the input would hold once read.
        max_voxels: the limit (``--max-voxels``).
        what: the input and its shape, starting the one-line message.
    """
    if count > max_voxels:
        raise InputError(
            f"{what} is {count:,} voxels, over the limit of {max_voxels:,}; crop or downsample "
            f"it, or pass --max-voxels {count} if this machine has the memory."
        )


def check_plane_size(shape_hw: tuple[int, int], what: str) -> None:
    """Refuse planes SAM cannot segment: a side under :data:`MIN_SIDE_PX` (16) pixels, or a
    short side under 16 pixels once SAM resizes the long side to :data:`SAM_LONG_SIDE_PX`
    (1024), i.e. an aspect ratio above 64:1.

    Args:
        shape_hw: (height, width) of a 2D image or of a volume's slices, in pixels.
        what: names the plane at the start of the message, e.g. "scan.png" or
            "ct.nii.gz: axial slices".

    Raises:
        InputError: one line saying what to do (pad, crop or resample).
    """
    height, width = (int(v) for v in shape_hw)
    short, long = min(height, width), max(height, width)
    if short < MIN_SIDE_PX:
        raise InputError(
            f"{what}: {height}x{width} px is too small; SAM needs at least {MIN_SIDE_PX} px on "
            "each side: pad or upsample it first (or slice along another --axis)."
        )
    resized = int(short * SAM_LONG_SIDE_PX / long + 0.5)  # SAM's ResizeLongestSide rounding
    if resized < MIN_SIDE_PX:
        raise InputError(
            f"{what}: {height}x{width} px is too elongated; SAM resizes the long side to "
            f"{SAM_LONG_SIDE_PX} px, leaving {resized} px across (at least {MIN_SIDE_PX} "
            f"needed): crop or pad it to at most {SAM_LONG_SIDE_PX // MIN_SIDE_PX}:1 first."
        )


def _replace_nonfinite(volume: Volume) -> None:
    """Count NaN/+-Inf voxels of a floating ``volume.data`` and replace them in place by the
    lowest finite value, setting ``volume.nonfinite`` and ``volume.finite_mask``.

    Works in chunks of :data:`NONFINITE_CHUNK` voxels, so the only full-size temporary is
    the bool mask kept in ``finite_mask`` (made only when some voxel is non-finite).

    Raises:
        InputError: no voxel is finite.
    """
    data = volume.data
    if not np.issubdtype(data.dtype, np.floating) or data.size == 0:
        return
    flat = data.reshape(-1)  # a view: data is C-contiguous
    chunks = [slice(i, i + NONFINITE_CHUNK) for i in range(0, flat.size, NONFINITE_CHUNK)]
    bad = sum(flat[s].size - int(np.count_nonzero(np.isfinite(flat[s]))) for s in chunks)
    if bad == 0:
        return
    if bad == flat.size:
        raise InputError(
            f"{volume.path}: every voxel is NaN or infinite; the file holds no image, "
            "re-export it from its source."
        )
    mask = np.empty(flat.shape, dtype=bool)
    lowest = np.inf
    for s in chunks:
        np.isfinite(flat[s], out=mask[s])
        lowest = min(lowest, float(np.min(flat[s], where=mask[s], initial=np.inf)))
    for s in chunks:
        part = flat[s]
        part[~mask[s]] = lowest
    volume.nonfinite = bad
    volume.finite_mask = mask.reshape(data.shape)
    logger.warning(
        "%s: %d voxels are NaN or infinite; treated as the lowest finite value %g (air, for "
        "CT) and left out of intensity statistics",
        volume.path,
        bad,
        lowest,
    )
