"""A lazy view of a volume as display slices along the slicing axis."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from salip.io import Volume
from salip.io.orientation import AXES, display_pixel_mm, in_plane_axes, source_slice_indices
from salip.io.slicing import BODY_HU, display_slice, slice_image

__all__ = [
    "BODY_FRACTION_8BIT",
    "PROMPT_MARGIN_MM",
    "VolumeView",
]

#: How far beyond the body's outline (mm) everything mode still seeds parts.
PROMPT_MARGIN_MM = 5.0

#: Outside CT, a pixel is body above this fraction of its slice's 99th-percentile 8-bit
#: value: normalised MR background sits a few levels above 0, tissue tens above.
BODY_FRACTION_8BIT = 0.1


class VolumeView:
    """The slices of an 8-bit volume, made on demand, plus what a strategy needs to know.

    Args:
        volume: the input in salip's canonical layout (XxYxZ RAS+, or a 2D image).
        volume8: ``volume`` mapped to uint8 (same shape).
        axis: slicing axis name ("axial", "coronal", "sagittal").
        body: bool per slice: whether the slice shows body (all True when not skipped).
        modality: the image's modality; "ct" finds the body in HU (:data:`BODY_HU`), any
            other (or None) in the 8-bit image (:data:`BODY_FRACTION_8BIT`).

    Attributes:
        count: number of slices along ``axis`` (1 for a 2D image).
        spacing: voxel size in mm along the canonical axes (X, Y, Z).
        slice_spacing: distance in mm between neighbouring slices (1.0 for a 2D image).
        display_shape: (H, W) of the display images.
        pixel_spacing: (row, column) size in mm of a display image's pixels ((1, 1) for a
            2D image).
        pixel_mm: ``pixel_spacing``, or None for a 2D image, whose pixel size is not known
            (for rules that must not take a pixel for a millimetre, like the area filter).
        mask_shape: shape of a canonical organ mask (XxYxZ, or HxW for a 2D image).
    """

    def __init__(
        self,
        volume: Volume,
        volume8: np.ndarray,
        axis: str,
        body: np.ndarray,
        modality: str | None = None,
    ):
        self.volume, self.volume8, self.axis = volume, volume8, axis
        self.modality = modality
        self.is_2d = volume.is_2d
        self.count = 1 if volume.is_2d else int(volume8.shape[AXES[axis]])
        if body.shape != (self.count,):
            raise ValueError(f"body has shape {body.shape}, expected ({self.count},)")
        self.body = body
        self.spacing = tuple(float(s) for s in volume.spacing[:3])
        self.slice_spacing = 1.0 if volume.is_2d else self.spacing[AXES[axis]]
        shape = volume.data.shape
        self.pixel_mm: tuple[float, float] | None = None
        if volume.is_2d:
            self.display_shape = (int(shape[0]), int(shape[1]))
        else:
            # A display image is the canonical slice (axes a < b) transposed: rows run along b.
            a, b = in_plane_axes(axis)
            self.display_shape = (int(shape[b]), int(shape[a]))
            self.pixel_mm = display_pixel_mm(self.spacing, axis)
        self.pixel_spacing = self.pixel_mm or (1.0, 1.0)
        self.mask_shape = volume.data.shape[:2] if volume.is_2d else volume.data.shape

    def image(self, index: int) -> np.ndarray:
        """HxWx3 uint8 RGB display image of slice ``index`` (0 <= index < count)."""
        if not 0 <= index < self.count:
            raise IndexError(f"slice {index} out of range 0..{self.count - 1}")
        return slice_image(self.volume8, self.is_2d, self.axis, index)

    def source_index(self, index: int) -> int:
        """Slice ``index`` as indexed along its axis in the input file (0 for 2D images)."""
        return source_slice_indices(self.volume, self.axis, [index])[1][0]

    def body_indices(self) -> list[int]:
        """Indices of the slices with body, in order."""
        return np.nonzero(self.body)[0].tolist()

    def prompt_region(self, index: int) -> np.ndarray | None:
        """HxW bool: where on display slice ``index`` everything mode seeds parts. The body
        (above :data:`BODY_HU` for CT; otherwise above :data:`BODY_FRACTION_8BIT` of the
        slice's 99th-percentile 8-bit value), its holes
        (lungs, bowel gas) filled, grown by :data:`PROMPT_MARGIN_MM`; None for a 2D image,
        where every pixel may be the subject."""
        if self.is_2d:
            return None
        if self.modality == "ct":
            body = display_slice(self.volume.data, False, self.axis, index) > BODY_HU
        else:
            image = display_slice(self.volume8, False, self.axis, index)
            body = image > BODY_FRACTION_8BIT * np.percentile(image, 99)
        body = ndimage.binary_fill_holes(body)
        steps = max(1, round(PROMPT_MARGIN_MM / min(self.pixel_spacing)))
        return ndimage.binary_dilation(body, iterations=steps)
