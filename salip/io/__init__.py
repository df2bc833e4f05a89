"""Volume I/O: read NIfTI, DICOM series and 2D images into one canonical form.

Volumes are reoriented to canonical RAS+ on the way in (nibabel's orientation tools) and the
:class:`SourceGeometry` remembers how to undo it, so that :mod:`salip.io.writing` can return
masks in the input's exact grid. DICOM series are first put in the grid dcm2niix (and so
TotalSegmentator) writes for them: columns along i, rows along j flipped (LAS for an axial
series), slices sorted along the slice normal.

Every input is checked before its data is read, so a corrupt or hostile file fails with one
line instead of filling the memory: the size its header claims against the file's size and
against ``max_voxels``; the NIfTI affine; the DICOM slice spacing (a missing or corrupt slice
is an error unless ``dicom_gaps="resample"``); the size of 2D images. Non-finite voxels
(NaN, +-Inf) are replaced by the lowest finite value and counted (:attr:`Volume.nonfinite`).

Modules (each one concept; every public name is importable from ``salip.io``):

- :mod:`salip.io.volume`: :class:`Volume`, :class:`SourceGeometry`, :func:`file_stem` and the
  constants the readers share (suffixes, ``DEFAULT_MAX_VOXELS``, modality words);
- :mod:`salip.io.checks`: ``check_voxels``, ``check_plane_size``, non-finite replacement and
  one-line exception reasons;
- :mod:`salip.io.orientation`: the canonical RAS+ reorientation and its inverse
  (``to_canonical``, ``to_source_grid``, ``source_slice_indices``, ``AXES``);
- :mod:`salip.io.nifti`, :mod:`salip.io.dicom`, :mod:`salip.io.images`: the three readers;
- this module: :func:`read_input` and :func:`input_kind`, which dispatch to them.
"""

from __future__ import annotations

from numbers import Integral
from pathlib import Path

from salip.core.errors import InputError
from salip.io.checks import (
    MIN_SIDE_PX,
    NONFINITE_CHUNK,
    SAM_LONG_SIDE_PX,
    check_plane_size,
    check_voxels,
)
from salip.io.dicom import (
    DICOM_GAP_MODES,
    NOT_DICOM_NAMES,
    NOT_DICOM_SUFFIXES,
    read_dicom_series,
)
from salip.io.dicom_grid import DICOM_GAP_TOLERANCE
from salip.io.images import read_image
from salip.io.nifti import (
    AFFINE_AGREEMENT_MM,
    GZIP_MAX_RATIO,
    MAX_AFFINE_CONDITION,
    read_nifti,
)
from salip.io.orientation import AXES, source_slice_indices, to_canonical, to_source_grid
from salip.io.volume import (
    DEFAULT_MAX_VOXELS,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    SourceGeometry,
    Volume,
    file_stem,
)

__all__ = [
    "AFFINE_AGREEMENT_MM",
    "AXES",
    "DEFAULT_MAX_VOXELS",
    "DICOM_GAP_MODES",
    "DICOM_GAP_TOLERANCE",
    "GZIP_MAX_RATIO",
    "IMAGE_SUFFIXES",
    "MAX_AFFINE_CONDITION",
    "MIN_SIDE_PX",
    "NIFTI_SUFFIXES",
    "NONFINITE_CHUNK",
    "NOT_DICOM_NAMES",
    "NOT_DICOM_SUFFIXES",
    "SAM_LONG_SIDE_PX",
    "SourceGeometry",
    "Volume",
    "check_plane_size",
    "check_voxels",
    "file_stem",
    "input_kind",
    "read_dicom_series",
    "read_image",
    "read_input",
    "read_nifti",
    "source_slice_indices",
    "to_canonical",
    "to_source_grid",
]


def input_kind(path: Path) -> str:
    """Classify ``path`` as "nifti", "dicom" (folder or zip) or "image".

    Raises:
        InputError: ``path`` does not exist, is a single DICOM file, or has another suffix.
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".zip"):
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(".dcm"):
        raise InputError(
            f"{path}: a single DICOM file; pass the folder (or a .zip) holding the whole series."
        )
    raise InputError(
        f"{path}: unsupported file type; use NIfTI (.nii, .nii.gz), a DICOM folder or .zip, "
        f"or a 2D image ({', '.join(IMAGE_SUFFIXES)})."
    )


def read_input(
    path: str | Path,
    *,
    channel: int | None = None,
    series: str | None = None,
    dicom_gaps: str = "error",
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read any supported input.

    Args:
        path: a NIfTI file, a DICOM folder or .zip, or a 2D image.
        channel: for a 4D NIfTI file holding several volumes (e.g. the MR sequences of a
            Medical Segmentation Decathlon case), the index along its 4th axis of the
            volume to read (``--channel``). An error for other inputs.
        series: for a DICOM folder or zip holding several series, the SeriesInstanceUID of
            the one to read (``--series``). An error for other inputs.
        dicom_gaps: "error" (default) refuses a DICOM series with a missing, unreadable or
            undecodable slice or uneven spacing; "resample" interpolates it onto a uniform
            grid (see :func:`read_dicom_series`). ``--dicom-gaps``.
        max_voxels: refuse inputs whose header claims more voxels (``--max-voxels``).

    Raises:
        InputError: missing, unreadable, corrupt, too large, 4D without ``channel`` or
            otherwise unsupported input; ``channel`` for an input that is not a 4D NIfTI
            file, or ``series`` for one that is not DICOM.
    """
    path = Path(path)
    if dicom_gaps not in DICOM_GAP_MODES:
        raise InputError(
            f"dicom_gaps {dicom_gaps!r} is not known; use --dicom-gaps error|resample."
        )
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, Integral) or max_voxels < 1:
        raise InputError(f"max_voxels {max_voxels!r} must be a whole number >= 1 (--max-voxels).")
    kind = input_kind(path)
    what = {"nifti": "a NIfTI file", "dicom": "a DICOM series", "image": "a 2D image"}[kind]
    if channel is not None and kind != "nifti":
        raise InputError(f"{path}: --channel is for 4D NIfTI files, and this is {what}; drop it.")
    if series is not None and kind != "dicom":
        raise InputError(f"{path}: --series is for DICOM series, and this is {what}; drop it.")
    if kind == "nifti":
        return read_nifti(path, channel=channel, max_voxels=max_voxels)
    if kind == "dicom":
        return read_dicom_series(path, series=series, dicom_gaps=dicom_gaps, max_voxels=max_voxels)
    return read_image(path, max_voxels=max_voxels)
