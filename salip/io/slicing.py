"""Slicing and windowing: canonical volumes -> 8-bit RGB slices for SAM and CLIP.

Slices are shown in the radiological display convention that CLIP and SAM have seen in
medical figures: for an axial slice, anterior at the top and the patient's right on the
image's left. :func:`to_display` and :func:`from_display` convert between a canonical RAS+
slice (indexed [x, y] or similar) and that display image (indexed [row, col]).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from salip.core.config import SliceConfig
from salip.core.errors import ConfigError, InputError
from salip.core.organs import Organ
from salip.core.windows import WINDOWS, parse_window  # noqa: F401 - re-exported
from salip.io import Volume, check_plane_size
from salip.io.orientation import AXES  # canonical axis per slicing axis name

__all__ = [
    "BODY_HU",
    "DISPLAY_EDGES",
    "MIN_BODY_FRACTION",
    "apply_window",
    "body_slices",
    "check_slice_geometry",
    "choose_intensity",
    "detect_modality",
    "display_slice",
    "from_display",
    "Intensity",
    "iter_slices",
    "n_slices",
    "percentile_normalise",
    "slice_image",
    "to_display",
    "to_uint8",
]

logger = logging.getLogger(__name__)

#: Elements converted at a time by :func:`_linear_to_uint8` (64 MiB of float32).
_CHUNK = 1 << 24


def _linear_to_uint8(values: np.ndarray, low: float, scale: float) -> np.ndarray:
    """``clip(rint((values - low) * scale), 0, 255)`` as uint8, same shape.

    Computed in float32 over chunks of the flattened array, in place, so a large volume
    needs one uint8 output and one 64 MiB buffer rather than several float32 copies of
    itself (the result is the same as the whole-array expression).
    """
    flat = values.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    for start in range(0, flat.size, _CHUNK):
        buf = flat[start : start + _CHUNK].astype(np.float32)
        buf -= np.float32(low)
        buf *= np.float32(scale)
        np.rint(buf, out=buf)
        np.clip(buf, 0, 255, out=buf)
        out[start : start + _CHUNK] = buf
    return out.reshape(values.shape)


def apply_window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU to uint8: ``level - width/2`` -> 0, ``level + width/2`` -> 255, clipped."""
    return _linear_to_uint8(values, level - width / 2.0, 255.0 / width)


def percentile_normalise(
    values: np.ndarray, low: float, high: float, finite: np.ndarray | None = None
) -> np.ndarray:
    """Map the [low, high] percentiles of ``values`` linearly to [0, 255] uint8.

    Args:
        values: any shape, any real dtype.
        low, high: percentiles in [0, 100].
        finite: optional bool mask, same shape: only these voxels enter the percentiles
            (the reader replaced non-finite voxels by the minimum; they must not move them).
    """
    sample = values if finite is None else values[finite]
    lo, hi = np.percentile(sample, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    return _linear_to_uint8(values, float(lo), 255.0 / float(hi - lo))


#: File-name words that say a 2D image's modality (compared with the name's words).
_NAME_MODALITY: dict[str, str] = {
    "ct": "ct",
    "mr": "mr",
    "mri": "mr",
    "xray": "xray",
    "cxr": "xray",
    "radiograph": "xray",
    "dx": "xray",
    "us": "us",
    "ultrasound": "us",
    "echo": "us",
    "sonography": "us",
}


def detect_modality(volume: Volume) -> tuple[str, str]:
    """Best guess of the modality, and how it was chosen: ``(modality, reason)``.

    In order: the file's own tags (DICOM Modality, or a 2D image's metadata); for volumes,
    the intensity range (reaching -500 or lower with values above 300 looks like CT in HU,
    other volumes are treated as MR; non-finite voxels were replaced by the minimum when
    the volume was read, so they do not count); for 2D images, a word of the file name or
    its folder's name ("ct", "mr"/"mri", "xray"/"cxr"/"radiograph", "us"/"ultrasound").

    Raises:
        ConfigError: a 2D image whose tags and name say nothing: a grey or colour picture
            can be any modality, so ``--modality`` must be given.
    """
    if volume.modality:
        return volume.modality, volume.meta.get("modality_from", "file tags")
    if not volume.is_2d:
        lo, hi = float(volume.data.min()), float(volume.data.max())
        guess = "ct" if lo <= -500.0 and hi >= 300.0 else "mr"
        return guess, f"intensity range [{lo:g}, {hi:g}]"
    for part in (volume.path.stem, volume.path.parent.name):
        words = re.split(r"[^a-z0-9]+", part.lower())
        for word in words:
            if word in _NAME_MODALITY:
                return _NAME_MODALITY[word], f"the word '{word}' in the file path"
    raise ConfigError(
        f"{volume.path}: cannot tell the modality of a 2D image from its name or metadata; "
        "pass --modality ct, mr, xray or us."
    )


@dataclass(frozen=True)
class Intensity:
    """The intensity mapping chosen for one run (recorded in the report)."""

    modality: str
    method: str  # "window", "percentile" or "unchanged"
    width: float | None = None
    level: float | None = None
    modality_from: str = "--modality"


def choose_intensity(volume: Volume, organs: list[Organ], config: SliceConfig) -> Intensity:
    """Decide how to map intensities to 8 bits for ``volume``.

    With ``--modality auto``, a 2D image that does not say its modality takes the one
    modality all its targets are defined for, when they share only one (celiac_trunk: ct).

    Raises:
        ConfigError: ``--modality auto`` on a 2D image that does not say its modality, for
            targets defined in several modalities.
    """
    if config.modality == "auto":
        try:
            modality, reason = detect_modality(volume)
        except ConfigError:
            shared = set.intersection(*(set(o.modalities) for o in organs)) if organs else set()
            if len(shared) != 1:
                raise
            modality = shared.pop()
            names = ", ".join(o.name for o in organs)
            reason = f"the only modality {names} {'is' if len(organs) == 1 else 'are'} defined for"
    else:
        modality, reason = config.modality, "--modality"
    if volume.is_2d and volume.data.dtype == np.uint8 and config.window is None:
        return Intensity(modality, "unchanged", modality_from=reason)
    if config.window is not None:
        if modality != "ct":
            logger.warning("applying a CT window to a %s image as asked", modality)
        width, level = parse_window(config.window)
        return Intensity(modality, "window", width, level, reason)
    if modality == "ct":
        presets = {organ.window for organ in organs}
        preset = organs[0].window if len(presets) == 1 else "abdomen"
        width, level = parse_window(preset)
        return Intensity(modality, "window", width, level, reason)
    return Intensity(modality, "percentile", modality_from=reason)


def to_uint8(volume: Volume, intensity: Intensity, config: SliceConfig) -> np.ndarray:
    """The whole volume (or image) mapped to uint8, same shape as ``volume.data``."""
    if intensity.method == "unchanged":
        return volume.data
    if intensity.method == "window":
        return apply_window(volume.data, intensity.width, intensity.level)  # type: ignore[arg-type]
    return percentile_normalise(
        volume.data, config.percentile_low, config.percentile_high, volume.finite_mask
    )


#: Hounsfield units above which a CT voxel counts as body (air and padding lie below).
BODY_HU = -500.0

#: Fraction of a slice's pixels that must be body for the slice to be segmented.
MIN_BODY_FRACTION = 0.001


def body_slices(volume: Volume, volume8: np.ndarray, intensity: Intensity, axis: str) -> np.ndarray:
    """Which slices along ``axis`` show any body: a bool array, True = segment the slice.

    An intensity rule with no model and no labels. A slice is kept when at least
    :data:`MIN_BODY_FRACTION` of its pixels (and at least one) are body: above
    :data:`BODY_HU` for CT, above 0 in the 8-bit image for other modalities (the
    normalisation floor, where background falls). 2D images always have their one slice.

    Args:
        volume: the canonical volume (CT in HU).
        volume8: its uint8 version, same shape (:func:`to_uint8`).
        intensity: the mapping used for ``volume8`` (its modality picks the rule).
        axis: "axial", "coronal" or "sagittal".

    Returns:
        A bool array with one entry per slice index along ``axis``.
    """
    if volume.is_2d:
        return np.ones(1, dtype=bool)
    ax = AXES[axis]
    other = tuple(a for a in range(3) if a != ax)
    per_slice = volume.data.size // volume.data.shape[ax]
    needed = max(1, int(np.ceil(MIN_BODY_FRACTION * per_slice)))
    counts = np.zeros(volume.data.shape[ax], dtype=np.int64)
    # Slab by slab along the first axis, so no full-size bool volume is made.
    for start in range(0, volume.data.shape[0], 16):
        if intensity.modality == "ct":
            body = volume.data[start : start + 16] > BODY_HU
        else:
            body = volume8[start : start + 16] > 0
        if ax == 0:
            counts[start : start + len(body)] += np.count_nonzero(body, axis=(1, 2))
        else:
            counts += np.count_nonzero(body, axis=other)
    return counts >= needed


#: The patient's direction at the (top, bottom, left, right) edge of a display slice
#: (:func:`to_display`: radiological convention, the patient's right on the image's left).
DISPLAY_EDGES: dict[str, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}


def to_display(canonical_slice: np.ndarray) -> np.ndarray:
    """Canonical RAS+ slice (AxB, A and B in increasing axis order) -> display image (BxA).

    Both in-plane axes of a canonical slice point to the patient's right/anterior/superior;
    the display shows the right on the left and anterior/superior at the top, so both are
    reversed and the result is transposed to [row, col].
    """
    return np.flip(canonical_slice, (0, 1)).T


def from_display(display_image: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_display`."""
    return np.flip(display_image.T, (0, 1))


def n_slices(volume: Volume, axis: str) -> int:
    """Number of slices along ``axis`` (1 for 2D images)."""
    return 1 if volume.is_2d else volume.data.shape[AXES[axis]]


def display_slice(volume: np.ndarray, is_2d: bool, axis: str, index: int) -> np.ndarray:
    """One slice of a canonical array in display orientation, any dtype.

    Args:
        volume: XxYxZ canonical array (a volume, or a mask aligned with it), or HxW(xC)
            for a 2D image.
        is_2d: whether ``volume`` is a 2D image (then returned as it is; ``index`` is 0).
        axis: "axial", "coronal" or "sagittal".
        index: slice index along ``axis`` in the canonical array.

    Returns:
        HxW array (HxWxC for 2D colour images) in the radiological display orientation of
        :func:`to_display`, the orientation of the images :func:`iter_slices` yields.
    """
    if is_2d:
        return volume
    if axis not in AXES:
        raise ConfigError(f"unknown axis '{axis}'; use one of {', '.join(AXES)}.")
    return to_display(np.take(volume, index, axis=AXES[axis]))


def slice_image(volume8: np.ndarray, is_2d: bool, axis: str, index: int) -> np.ndarray:
    """One slice as the HxWx3 uint8 RGB display image the segmenters take.

    Args:
        volume8: uint8 XxYxZ canonical volume, or HxWxC uint8 image when ``is_2d``.
        is_2d: whether ``volume8`` is a 2D image (one slice, index 0).
        axis: "axial", "coronal" or "sagittal".
        index: slice index along ``axis`` in the canonical volume.
    """
    if is_2d:
        image = volume8 if volume8.shape[2] == 3 else np.repeat(volume8, 3, axis=2)
        return np.ascontiguousarray(image)
    grey = display_slice(volume8, False, axis, index)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def iter_slices(volume8: np.ndarray, is_2d: bool, axis: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, HxWx3 uint8 RGB display image)`` for every slice.

    Args:
        volume8: uint8 XxYxZ canonical volume, or HxWxC uint8 image when ``is_2d``.
        is_2d: whether ``volume8`` is a 2D image (one slice, index 0).
        axis: "axial", "coronal" or "sagittal".
    """
    if not is_2d and axis not in AXES:
        raise ConfigError(f"unknown axis '{axis}'; use one of {', '.join(AXES)}.")
    count = 1 if is_2d else volume8.shape[AXES[axis]]
    for index in range(count):
        yield index, slice_image(volume8, is_2d, axis, index)


def check_slice_geometry(volume: Volume, axis: str) -> None:
    """Warn on strongly anisotropic in-plane spacing; refuse empty volumes and slices too
    small or too narrow for SAM (:func:`salip.io.check_plane_size`)."""
    if volume.data.size == 0:
        raise InputError(f"{volume.path}: the image is empty.")
    if volume.is_2d:
        return
    plane = tuple(n for i, n in enumerate(volume.data.shape) if i != AXES[axis])
    check_plane_size(plane, f"{volume.path}: {axis} slices")
    in_plane = [s for i, s in enumerate(volume.spacing) if i != AXES[axis]]
    if max(in_plane) > 1.5 * min(in_plane):
        logger.warning(
            "in-plane spacing %s mm is anisotropic along %s slices; SAM sees stretched "
            "anatomy (consider slicing along another --axis)",
            in_plane,
            axis,
        )
