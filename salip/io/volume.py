"""salip.io's data classes: :class:`Volume` (an input in salip's internal layout) and
:class:`SourceGeometry` (how the input was stored), with the constants the readers share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.config import MAX_VOXELS

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "file_stem",
    "SourceGeometry",
    "Volume",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Default of ``read_input(max_voxels=...)`` (``--max-voxels``): inputs whose header claims
#: more voxels are refused before any data is read. 2**30 voxels are 4 GiB as float32.
DEFAULT_MAX_VOXELS = MAX_VOXELS

# Modality names and codes -> salip's modalities (DICOM Modality tag and image metadata).
_MODALITY_WORDS = {
    "ct": "ct",
    "mr": "mr",
    "mri": "mr",
    "us": "us",
    "ultrasound": "us",
    "xray": "xray",
    "x-ray": "xray",
    "xr": "xray",
    "cr": "xray",
    "dx": "xray",
    "dr": "xray",
    "xa": "xray",
    "rf": "xray",
}


def file_stem(path: str | Path) -> str:
    """File name of ``path`` without its extension; ".nii.gz" (any case) counts as one."""
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    return Path(name).stem


@dataclass
class SourceGeometry:
    """How the input was stored, so masks can be written back in its exact grid.

    Attributes:
        kind: "nifti", "dicom" or "image".
        shape: the input's array shape (for NIfTI, as stored, e.g. XxYxZ or XxY).
        affine: 4x4 voxel-to-RAS+ world matrix of the input grid (identity for images).
        ornt: nibabel orientation array (3x2) of the input grid; None for images.
        header: the input NIfTI header to copy into written masks; None otherwise.
    """

    kind: str
    shape: tuple[int, ...]
    affine: np.ndarray
    ornt: np.ndarray | None = None
    header: Any = None


@dataclass
class Volume:
    """An input image in salip's internal layout.

    Attributes:
        data: XxYxZ float32 intensities in canonical RAS+ order for volumes (HU for CT);
            for 2D images HxWxC (C = 1 or 3) in their stored dtype (uint8, uint16, int32 or
            float32), untouched except for non-finite values.
        affine: 4x4 voxel-to-world matrix of ``data`` (canonical RAS+; identity for images).
        spacing: voxel size in mm along the axes of ``data`` ((1, 1, 1) if unknown).
        geometry: how to undo the canonical reorientation.
        modality: "ct", "mr", "xray" or "us" when the file says so (DICOM Modality tag, 2D
            image metadata), else None; ``meta["modality_from"]`` says where it came from.
        path: the input path.
        meta: extra facts for the report (series UID, slice count, affine source, ...).
        nonfinite: how many voxels of the file were NaN or +-Inf; in ``data`` they hold the
            lowest finite value (air, for CT).
        finite_mask: bool array of ``data``'s shape, True where the file's value was finite;
            None when every voxel was.
        sources: for a DICOM series read on its own grid, each slice's pydicom data set
            (every element but the pixel data) in the order of the input grid's slice axis
            (the mask file's last axis), for outputs that reference them (DICOM SEG); None
            for other inputs and resampled series.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    geometry: SourceGeometry
    modality: str | None
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    nonfinite: int = 0
    finite_mask: np.ndarray | None = None
    sources: list[Any] | None = field(default=None, repr=False)

    @property
    def is_2d(self) -> bool:
        """True for 2D images (PNG, JPEG, TIFF, ...)."""
        return self.geometry.kind == "image"
