"""Stage 1, volume I/O: read NIfTI, DICOM series and 2D images into one canonical form.

Volumes are reoriented to canonical RAS+ on the way in (nibabel's orientation tools) and the
:class:`SourceGeometry` remembers how to undo it, so that :mod:`salip.writing` can return
masks in the input's exact grid. DICOM series are first put in the grid dcm2niix (and so
TotalSegmentator) writes for them: columns along i, rows along j flipped (LAS for an axial
series), slices sorted along the slice normal.

Every input is checked before its data is read, so a corrupt or hostile file fails with one
line instead of filling the memory: the size its header claims against the file's size and
against ``max_voxels``; the NIfTI affine; the DICOM slice spacing (a missing or corrupt slice
is an error unless ``dicom_gaps="resample"``); the size of 2D images. Non-finite voxels
(NaN, +-Inf) are replaced by the lowest finite value and counted (:attr:`Volume.nonfinite`).
"""

from __future__ import annotations

import io
import logging
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from salip.config import MAX_VOXELS
from salip.errors import InputError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

#: Default of ``read_input(max_voxels=...)`` (``--max-voxels``): inputs whose header claims
#: more voxels are refused before any data is read. 2**30 voxels are 4 GiB as float32.
DEFAULT_MAX_VOXELS = MAX_VOXELS

#: Highest possible deflate compression ratio (zlib's technical limit is about 1032:1), so
#: a .nii.gz whose header claims more than this times its own size must be truncated.
GZIP_MAX_RATIO = 1032

#: An affine's 3x3 part with a larger condition number counts as singular (a zero or
#: repeated axis); real scanner grids, even oblique or sheared, are far below it.
MAX_AFFINE_CONDITION = 1e8

#: sform and qform differing by more than this (largest entry, mm) "disagree".
AFFINE_AGREEMENT_MM = 1e-3

#: Voxels per chunk when counting and replacing non-finite values (16 MiB of float32).
NONFINITE_CHUNK = 2**22

#: A DICOM slice step (along the slice normal) that differs from the series' median step by
#: more than this fraction of it is a gap or uneven spacing.
DICOM_GAP_TOLERANCE = 0.01

#: How ``read_input(dicom_gaps=...)`` (``--dicom-gaps``) treats gaps and uneven spacing.
DICOM_GAP_MODES = ("error", "resample")

#: Smallest side, in pixels, of a 2D image or slice salip segments; also the smallest short
#: side after SAM resizes the long side to :data:`SAM_LONG_SIDE_PX` (so at most 64:1).
MIN_SIDE_PX = 16

#: SAM resizes every image so that its long side has this many pixels.
SAM_LONG_SIDE_PX = 1024

#: File names in a DICOM folder or zip that are ignored quietly: clearly not DICOM images.
NOT_DICOM_SUFFIXES = (
    *NIFTI_SUFFIXES,
    *IMAGE_SUFFIXES,
    ".gz",
    ".txt",
    ".json",
    ".md",
    ".csv",
    ".xml",
    ".html",
    ".htm",
    ".pdf",
    ".zip",
    ".py",
    ".log",
    ".ini",
    ".db",
    ".exe",
    ".inf",
)
NOT_DICOM_NAMES = ("DICOMDIR", "THUMBS.DB", "DESKTOP.INI", "LOCKFILE", "VERSION")

# pydicom warnings that mean the file ended early.
_TRUNCATION = re.compile(r"end of file|truncat|fewer bytes|expected .* bytes", re.IGNORECASE)

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

    @property
    def is_2d(self) -> bool:
        """True for 2D images (PNG, JPEG, TIFF, ...)."""
        return self.geometry.kind == "image"


def input_kind(path: Path) -> str:
    """Classify ``path`` as "nifti", "dicom" (folder or zip) or "image"."""
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
            volume to read (``--channel``). Ignored for other inputs.
        series: for a DICOM folder or zip holding several series, the SeriesInstanceUID of
            the one to read (``--series``). Ignored for other inputs.
        dicom_gaps: "error" (default) refuses a DICOM series with a missing, unreadable or
            undecodable slice or uneven spacing; "resample" interpolates it onto a uniform
            grid (see :func:`read_dicom_series`). ``--dicom-gaps``.
        max_voxels: refuse inputs whose header claims more voxels (``--max-voxels``).

    Raises:
        InputError: missing, unreadable, corrupt, too large, 4D without ``channel`` or
            otherwise unsupported input.
    """
    path = Path(path)
    if dicom_gaps not in DICOM_GAP_MODES:
        raise InputError(
            f"dicom_gaps {dicom_gaps!r} is not known; use --dicom-gaps error|resample."
        )
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, Integral) or max_voxels < 1:
        raise InputError(f"max_voxels {max_voxels!r} must be a whole number >= 1 (--max-voxels).")
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    kind = input_kind(path)
    if kind == "nifti":
        return read_nifti(path, channel=channel, max_voxels=max_voxels)
    if kind == "dicom":
        return read_dicom_series(path, series=series, dicom_gaps=dicom_gaps, max_voxels=max_voxels)
    return read_image(path, max_voxels=max_voxels)


# ----------------------------------------------------------------------------- shared checks


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


def _canonical(
    data: np.ndarray, affine: np.ndarray, kind: str, path: Path, header: Any = None
) -> Volume:
    """Reorient an XxYxZ array with its affine to RAS+ and record how to undo it."""
    import nibabel as nib
    from nibabel import orientations as nio

    shape = data.shape
    vol3 = data.reshape(shape + (1,) * (3 - data.ndim)) if data.ndim < 3 else data
    ornt = nio.io_orientation(affine)
    to_ras = nio.ornt_transform(ornt, nio.axcodes2ornt("RAS"))
    canonical = nio.apply_orientation(vol3, to_ras)
    canonical_affine = affine @ nio.inv_ornt_aff(to_ras, vol3.shape)
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(canonical_affine))
    geometry = SourceGeometry(
        kind=kind, shape=tuple(shape), affine=affine.copy(), ornt=ornt, header=header
    )
    return Volume(
        data=np.ascontiguousarray(canonical, dtype=np.float32),
        affine=canonical_affine,
        spacing=spacing,
        geometry=geometry,
        modality=None,
        path=path,
    )


def to_canonical(array: np.ndarray, geometry: SourceGeometry) -> np.ndarray:
    """An array in the input's grid -> salip's canonical layout, like the input's data.

    The inverse of :func:`salip.writing.to_source_grid`: an array of ``geometry.shape``
    (e.g. a reference mask stored like the input file) becomes XxYxZ in canonical RAS+
    order; 2D images (HxW) come back unchanged.
    """
    if geometry.kind == "image":
        return array
    from nibabel import orientations as nio

    if tuple(array.shape) != tuple(geometry.shape):
        raise InputError(
            f"array of shape {array.shape} is not in the input's grid {geometry.shape}."
        )
    vol3 = array.reshape(array.shape + (1,) * (3 - array.ndim)) if array.ndim < 3 else array
    to_ras = nio.ornt_transform(geometry.ornt, nio.axcodes2ornt("RAS"))
    return nio.apply_orientation(vol3, to_ras)


# ----------------------------------------------------------------------------- NIfTI


def read_nifti(
    path: Path, *, channel: int | None = None, max_voxels: int = DEFAULT_MAX_VOXELS
) -> Volume:
    """Read a 2D or 3D NIfTI file; of a 4D file, volume ``channel`` (or its only volume).

    Before any voxel is read, the header is checked against the file (an uncompressed file
    must hold the bytes its header claims; a .nii.gz cannot claim more than
    :data:`GZIP_MAX_RATIO` times its size) and against ``max_voxels``, and its affine is
    validated (:func:`_nifti_affine`). NaN/+-Inf voxels are replaced and counted
    (:func:`_replace_nonfinite`). ``meta["affine_source"]`` is "sform", "qform" or "pixdim".

    Raises:
        InputError: empty, garbage, truncated, too large, RGB, 4D without ``channel``, 5D or
            more, non-numeric voxels, or a broken affine; one line each.
    """
    import nibabel as nib

    img = _load_nifti_header(path)
    shape, index = _nifti_shape(img, path, channel)
    _check_nifti_size(img, path, shape, index, max_voxels)
    affine, source, header = _nifti_affine(img, path)
    data = _read_nifti_data(img, path, shape, index)
    if header.get_data_shape() != data.shape:
        header.set_data_shape(data.shape)
    volume = _canonical(data, affine, "nifti", path, header=header)
    volume.meta["affine_source"] = source
    _replace_nonfinite(volume)
    logger.info(
        "read %s: shape %s, orientation %s", path, data.shape, "".join(nib.aff2axcodes(affine))
    )
    return volume


def _load_nifti_header(path: Path) -> Any:
    """``nib.load`` (reads the header only), with empty and garbage files as InputError."""
    import nibabel as nib

    if path.stat().st_size == 0:
        raise InputError(
            f"{path}: cannot read NIfTI: empty file (0 bytes); re-export or re-download it."
        )
    try:
        img = nib.load(str(path))
        img.header.get_data_dtype()
    except Exception as exc:  # nibabel raises many types for garbage files
        raise InputError(
            f"{path}: cannot read NIfTI: not NIfTI or damaged ({_reason(exc)}); re-export or "
            "re-download it."
        ) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI-1/NIfTI-2 file; convert it to .nii.gz first.")
    return img


def _nifti_shape(img: Any, path: Path, channel: int | None) -> tuple[tuple[int, ...], int | None]:
    """The file's shape (trailing singleton axes past the 3rd dropped) and the index of the
    4th-axis volume to read (None for 2D/3D); refuses RGB, complex, 4D without ``channel``
    and 5D+ files."""
    dtype = img.header.get_data_dtype()
    if dtype.names is not None:
        raise InputError(
            f"{path}: RGB NIfTI (voxel type {dtype.names}); salip reads greyscale volumes: "
            "convert it to one grey channel first (e.g. with nibabel)."
        )
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(
            f"{path}: unsupported voxel type {dtype}; convert it to integers or floats first."
        )
    shape = tuple(int(n) for n in img.header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if not shape or min(shape) < 1 or len(shape) < 2:
        raise InputError(
            f"{path}: the header claims shape {shape}, not a 2D or 3D image; re-export the file."
        )
    if len(shape) > 4:
        raise InputError(
            f"{path}: {len(shape)}D image of shape {shape}; salip reads 2D and 3D images (or "
            "one volume of a 4D file with --channel N): save one 3D volume first (e.g. nibabel)."
        )
    if len(shape) < 4:
        return shape, None
    count = shape[3]
    if channel is None and count > 1:
        raise InputError(
            f"{path}: 4D image of shape {shape} holding {count} volumes; pick one with "
            f"--channel N (0..{count - 1})."
        )
    index = channel or 0
    if not 0 <= index < count:
        raise InputError(
            f"{path}: channel {index} out of range; the file holds {count} volumes: pass "
            f"--channel 0..{count - 1}."
        )
    return shape, index


def _check_nifti_size(
    img: Any, path: Path, shape: tuple[int, ...], index: int | None, max_voxels: int
) -> None:
    """Refuse a header that claims more bytes than the file can hold, or too many voxels.

    Claimed bytes = voxels x item size + vox_offset. An uncompressed file must be at least
    that long; a .nii.gz at least 1/:data:`GZIP_MAX_RATIO` of it (deflate's limit).
    """
    header = img.header
    claimed = int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    claimed += int(header.get_data_offset())
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        if claimed > GZIP_MAX_RATIO * size:
            raise InputError(
                f"{path}: cannot read NIfTI: truncated or corrupt: the header claims "
                f"{claimed:,} bytes, more than gzip can pack into the file's {size:,} bytes "
                f"(at most {GZIP_MAX_RATIO}:1); re-export or re-download it."
            )
    elif size < claimed:
        raise InputError(
            f"{path}: cannot read NIfTI: truncated: header claims {claimed:,} bytes, file has "
            f"{size:,}; re-export or re-download it."
        )
    read_shape = shape[:3] if index is not None else shape
    check_voxels(int(np.prod(read_shape, dtype=np.int64)), max_voxels, f"{path} {read_shape}")


def _affine_problem(affine: np.ndarray | None) -> str | None:
    """Why a 4x4 affine cannot place voxels in the world, or None when it can."""
    if affine is None:
        return "is missing"
    if not np.all(np.isfinite(affine)):
        return "holds NaN or infinite values"
    if np.linalg.cond(affine[:3, :3]) > MAX_AFFINE_CONDITION:
        return "is singular (a zero or repeated axis)"
    return None


def _qform_or_none(header: Any) -> np.ndarray | None:
    """The header's qform affine, or None when its quaternion cannot be turned into one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return header.get_qform()
    except Exception:  # noqa: BLE001 - nibabel raises several types for broken quaternions
        return None


def _nifti_affine(img: Any, path: Path) -> tuple[np.ndarray, str, Any]:
    """The validated voxel-to-world affine, which header field it came from, and a copy of
    the header to write masks with.

    nibabel's choice (``img.affine``) is used: the sform when its code is > 0, else the
    qform when its code is > 0, else the voxel sizes ("pixdim"). When both are set and
    disagree by more than :data:`AFFINE_AGREEMENT_MM`, one warning says the sform is used.
    A broken sform (non-finite, or a singular 3x3 part) with a valid qform falls back to the
    qform with a warning (the header copy then gets sform_code 0, so masks are written
    with the geometry actually used); any other broken affine is an InputError.
    """
    header = img.header.copy()
    s_code, q_code = int(header["sform_code"]), int(header["qform_code"])
    chosen = "sform" if s_code > 0 else "qform" if q_code > 0 else "pixdim"
    affine = np.asarray(img.affine, dtype=np.float64)
    qform = _qform_or_none(header) if q_code > 0 else None
    problem = _affine_problem(affine)
    if problem is None:
        if chosen == "sform" and qform is not None and _affine_problem(qform) is None:
            diff = float(np.max(np.abs(affine - qform)))
            if diff > AFFINE_AGREEMENT_MM:
                logger.warning(
                    "%s: sform and qform disagree (by up to %.3g mm); using the sform, as "
                    "nibabel and most tools do",
                    path,
                    diff,
                )
        return affine, chosen, header
    if chosen == "sform" and qform is not None and _affine_problem(qform) is None:
        logger.warning("%s: the sform %s; using the qform instead", path, problem)
        header["sform_code"] = 0
        return qform, "qform", header
    fields = "voxel sizes (pixdim; no sform or qform is set)" if chosen == "pixdim" else chosen
    raise InputError(
        f"{path}: the header's {fields} affine {problem}, so the voxel-to-world geometry is "
        "unknown; repair the header's sform/qform (e.g. fslorient -copyqform2sform, or "
        "nibabel's img.set_sform(affine, code=1)) and retry."
    )


def _read_nifti_data(img: Any, path: Path, shape: tuple[int, ...], index: int | None) -> np.ndarray:
    """The voxels: all of a 2D/3D file, or volume ``index`` of a 4D one (only it is read)."""
    try:
        # [:, :, :, index] (not [..., index]): trailing singleton axes may follow the 4th.
        part = img.dataobj if index is None else img.dataobj[:, :, :, index]
        data = np.asarray(part)
    except Exception as exc:  # zlib, gzip, nibabel and numpy errors for damaged data
        raise InputError(
            f"{path}: cannot read NIfTI: truncated or corrupt image data ({_reason(exc)}); "
            "re-export or re-download it."
        ) from exc
    return data.reshape(shape[:3] if index is not None else shape)


# ----------------------------------------------------------------------------- DICOM


@dataclass
class _DicomFile:
    """One readable DICOM image: its name (relative to the folder, or in the zip) and data
    set (pixel data not yet decoded)."""

    name: str
    ds: Any


@dataclass
class _Inventory:
    """What a DICOM folder or zip holds.

    Attributes:
        images: DICOM files with pixel data.
        unreadable: (name, reason) of files that may be DICOM images but cannot be read.
        ignored: names of files that are clearly not DICOM images (NIfTI, PNG, DICOMDIR, ...).
        total: number of files looked at.
    """

    images: list[_DicomFile] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    total: int = 0


@dataclass
class _Series:
    """One series of a DICOM folder or zip: its ``--series`` label (the SeriesInstanceUID,
    with "#k" appended when one UID holds several orientations or sizes, or is empty)."""

    label: str
    uid: str
    description: str
    files: list[_DicomFile]


def read_dicom_series(
    path: Path,
    *,
    series: str | None = None,
    dicom_gaps: str = "error",
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read one DICOM series from a folder (recursively) or a zip.

    Slices are sorted by their position along the slice normal and RescaleSlope/Intercept
    are applied per slice. A folder or zip with several series (SeriesInstanceUID,
    orientation or size) is refused unless ``series`` names one. Steps along the normal that
    differ from the median step by more than :data:`DICOM_GAP_TOLERANCE` (a missing or
    unreadable slice, or uneven spacing), and slices whose pixel data cannot be decoded,
    are an InputError. With ``dicom_gaps="resample"`` undecodable slices are dropped and
    the slices are interpolated linearly along the normal onto a uniform grid
    (:func:`_resample_slices`); ``meta`` then records ``dicom_gaps="resampled"``,
    ``true_positions_mm``, ``grid_step_mm`` and ``dropped_files``, and the affine is the
    uniform grid's. Files that are not DICOM images are skipped: quietly when clearly not
    DICOM (:data:`NOT_DICOM_SUFFIXES`, :data:`NOT_DICOM_NAMES`, dotfiles), else with a
    warning and their names in ``meta["unreadable_files"]``.

    Raises:
        InputError: no DICOM image, several series, gaps, undecodable slices, too many
            voxels, multi-frame or colour images; one line each.
    """
    with _quiet_pydicom():  # pydicom also logs when a tag is first read, not only on load
        return _read_series(path, series, dicom_gaps, max_voxels)


def _read_series(path: Path, series: str | None, dicom_gaps: str, max_voxels: int) -> Volume:
    """:func:`read_dicom_series` without the muting of pydicom's log."""
    inventory = _dicom_inventory(path, max_voxels)
    if not inventory.images:
        raise InputError(_no_dicom_message(path, inventory))
    uid, files = _select_series(path, _group_series(inventory.images), series)
    _check_series_header(path, files, max_voxels)
    files, positions, along = _sorted_slices(path, files)
    if dicom_gaps == "error":
        _check_spacing(path, files, along, inventory.unreadable)
    pixels, kept, undecodable = _decode_slices(path, files, dicom_gaps)
    files, positions, along = [files[i] for i in kept], positions[kept], along[kept]
    meta: dict[str, Any] = {"series_uid": uid, "slices": len(files)}
    skipped = inventory.unreadable + undecodable
    if inventory.unreadable:
        meta["unreadable_files"] = [name for name, _ in inventory.unreadable]
    if _irregular_steps(along).size:
        pixels, positions, gaps = _resample_slices(path, pixels, positions, along, max_voxels)
        meta.update(gaps, slices=len(pixels), dropped_files=[name for name, _ in skipped])
    elif skipped:
        logger.warning("%s: skipped %d files: %s", path, len(skipped), _describe(skipped))
    volume = _dicom_volume(files[0].ds, pixels, positions, path)
    volume.meta = meta
    volume.modality = _MODALITY_WORDS.get(str(files[0].ds.get("Modality", "")).strip().lower())
    if volume.modality:
        volume.meta["modality_from"] = "DICOM Modality tag"
    logger.info("read DICOM series %s: %d slices", path, len(pixels))
    return volume


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Mute pydicom's own log while reading: its warnings and errors about a damaged file
    would print as extra stderr lines, and salip reports them in its one-line errors (or
    warnings) anyway. Python warnings raised meanwhile are logged at debug level."""
    log = logging.getLogger("pydicom")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            logger.debug("pydicom: %s", warning.message)
    finally:
        log.setLevel(level)


def _describe(named: list[tuple[str, str]], limit: int = 3) -> str:
    """The first ``limit`` (name, reason) pairs as "name (reason), ...", then how many more."""
    text = ", ".join(f"{name} ({reason})" for name, reason in named[:limit])
    return text + (f" and {len(named) - limit} more" if len(named) > limit else "")


def _clearly_not_dicom(name: str) -> bool:
    """True for names no DICOM image has: dotfiles, DICOMDIR, NIfTI, PNG, text, ..."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base.startswith(".") or "__MACOSX/" in name or base.upper() in NOT_DICOM_NAMES:
        return True
    return base.lower().endswith(NOT_DICOM_SUFFIXES)


def _dicom_sources(path: Path, max_voxels: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(name, opener) of every file of a folder (recursively) or zip; ``opener()`` gives
    what :func:`pydicom.dcmread` reads. A zip that unpacks to more than 8 bytes per allowed
    voxel (DICOM's largest pixel type) is refused before anything is unpacked."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield str(file.relative_to(path)), lambda file=file: str(file)
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(
            f"{path}: not a valid zip file ({_reason(exc)}); re-create it, or pass the "
            "extracted folder."
        ) from exc
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        unpacked = sum(info.file_size for info in infos)
        if unpacked > 8 * max_voxels:
            raise InputError(
                f"{path}: unpacks to {unpacked:,} bytes, more than 8 bytes per voxel of the "
                f"--max-voxels limit ({max_voxels:,}); extract the one series you need, or "
                "raise --max-voxels."
            )
        for info in infos:
            yield info.filename, lambda info=info: io.BytesIO(archive.read(info))


def _read_dicom(opener: Callable[[], Any]) -> tuple[Any, str | None]:
    """(data set, None) for a DICOM image; (None, reason) for a file that cannot be read as
    one (including a parsed image without pixel data, e.g. a truncated file); (None, None)
    for DICOM files that hold no image (DICOMDIR, reports, structure sets)."""
    import pydicom

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(opener())
        except Exception as exc:  # pydicom and zipfile raise many types for damaged files
            return None, _reason(exc)
    pixel_tags = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    if any(tag in ds for tag in pixel_tags):
        if "Rows" not in ds or "Columns" not in ds:
            return None, "pixel data without Rows/Columns"
        return ds, None
    truncated = [w for w in caught if _TRUNCATION.search(str(w.message))]
    if "Rows" in ds or truncated or _is_image_storage(ds):
        detail = f": {' '.join(str(truncated[0].message).split())[:120]}" if truncated else ""
        return None, f"no pixel data, truncated?{detail}"
    return None, None


def _is_image_storage(ds: Any) -> bool:
    """True when the data set's SOP class is an image storage class (e.g. CT Image)."""
    from pydicom.uid import UID

    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID")
    return bool(uid) and "Image Storage" in UID(str(uid)).name


def _dicom_inventory(path: Path, max_voxels: int) -> _Inventory:
    """Sort the files of a DICOM folder or zip into images, unreadable and ignored."""
    inventory = _Inventory()
    for name, opener in _dicom_sources(path, max_voxels):
        inventory.total += 1
        if _clearly_not_dicom(name):
            inventory.ignored.append(name)
            continue
        ds, reason = _read_dicom(opener)
        if ds is not None:
            inventory.images.append(_DicomFile(name, ds))
        elif reason is not None:
            logger.debug("%s: cannot read %s as DICOM (%s)", path, name, reason)
            inventory.unreadable.append((name, reason))
        else:
            inventory.ignored.append(name)
    return inventory


def _no_dicom_message(path: Path, inventory: _Inventory) -> str:
    """One line saying what a folder or zip without DICOM images holds instead."""
    where = "folder" if path.is_dir() else "zip"
    if inventory.total == 0:
        return (
            f"{path}: empty {where}; pass a folder or .zip holding one DICOM series, or a "
            "NIfTI file or 2D image."
        )
    nifti = [n for n in inventory.ignored if n.lower().endswith(NIFTI_SUFFIXES)]
    images = [n for n in inventory.ignored if n.lower().endswith(IMAGE_SUFFIXES)]
    if nifti or images:
        kinds = [f"{len(nifti)} NIfTI file(s)"] if nifti else []
        kinds += [f"{len(images)} 2D image(s)"] if images else []
        example = (nifti or images)[0]
        target = path / example if where == "folder" else f"{example} once extracted"
        return (
            f"{path}: holds no DICOM series but {' and '.join(kinds)}; salip reads one "
            f"image per run: pass one file, e.g. {target}."
        )
    if inventory.unreadable:
        return (
            f"{path}: none of its {inventory.total} files is a readable DICOM image "
            f"({_describe(inventory.unreadable)}); pass a folder or .zip holding one series."
        )
    names = ", ".join(inventory.ignored[:3])
    return (
        f"{path}: no DICOM image files among its {inventory.total} files (e.g. {names}); pass a "
        "folder or .zip holding one DICOM series."
    )


def _group_series(images: list[_DicomFile]) -> list[_Series]:
    """Group slices by SeriesInstanceUID, orientation and size; largest group first."""
    groups: dict[tuple, list[_DicomFile]] = {}
    for file in images:
        ds = file.ds
        iop = tuple(
            round(float(v), 4) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
        )
        key = (str(ds.get("SeriesInstanceUID", "") or ""), iop, int(ds.Rows), int(ds.Columns))
        groups.setdefault(key, []).append(file)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    uids = [key[0] for key, _ in ordered]
    series, seen = [], {}
    for (uid, *_), files in ordered:
        seen[uid] = seen.get(uid, 0) + 1
        label = uid if uid and uids.count(uid) == 1 else f"{uid}#{seen[uid]}"
        description = str(files[0].ds.get("SeriesDescription", "") or "")
        series.append(_Series(label, uid, description, files))
    return series


def _list_series(groups: list[_Series], limit: int = 8) -> str:
    """The series as "label ('description', N slices of RxC); ..." on one line."""
    parts = []
    for g in groups[:limit]:
        desc = f"'{g.description}', " if g.description else ""
        size = f"{int(g.files[0].ds.Rows)}x{int(g.files[0].ds.Columns)}"
        parts.append(f"{g.label} ({desc}{len(g.files)} slices of {size})")
    more = f" and {len(groups) - limit} more" if len(groups) > limit else ""
    return "; ".join(parts) + more


def _select_series(
    path: Path, groups: list[_Series], series: str | None
) -> tuple[str, list[_DicomFile]]:
    """The (UID, files) of the series to read: the only one, or the one ``series`` names."""
    if series is None:
        if len(groups) == 1:
            return groups[0].uid, groups[0].files
        raise InputError(
            f"{path}: holds {len(groups)} DICOM series: {_list_series(groups)}; pick one with "
            "--series UID (or pass that series' own folder)."
        )
    chosen = [g for g in groups if g.label == series] or [g for g in groups if g.uid == series]
    if len(chosen) == 1:
        return chosen[0].uid, chosen[0].files
    if chosen:
        raise InputError(
            f"{path}: series {series} holds several orientations or sizes: "
            f"{_list_series(chosen)}; pick one with --series UID#k."
        )
    raise InputError(
        f"{path}: no series {series!r} here; it holds {_list_series(groups)}; pass one of "
        "these to --series."
    )


def _check_series_header(path: Path, files: list[_DicomFile], max_voxels: int) -> None:
    """Refuse multi-frame and colour images, and series over ``max_voxels``, before any
    pixel data is decoded."""
    for file in files:
        frames = int(file.ds.get("NumberOfFrames", 1) or 1)
        samples = int(file.ds.get("SamplesPerPixel", 1) or 1)
        if frames > 1 or samples > 1:
            raise InputError(
                f"{path}: {file.name} is a multi-frame or colour DICOM ({frames} frames, "
                f"{samples} samples per pixel); convert the series to NIfTI first (e.g. dcm2niix)."
            )
    rows, cols = int(files[0].ds.Rows), int(files[0].ds.Columns)
    what = f"{path}: DICOM series of {len(files)} slices of {rows}x{cols}"
    check_voxels(rows * cols * len(files), max_voxels, what)


def _sorted_slices(
    path: Path, files: list[_DicomFile]
) -> tuple[list[_DicomFile], np.ndarray, np.ndarray]:
    """Slices sorted along the slice normal, their Nx3 ImagePositionPatient (LPS+, mm) and
    their N positions along the normal (mm); refuses two slices at one position."""
    iop = _orientation(files[0].ds)
    normal = np.cross(iop[:3], iop[3:])
    try:
        positions = np.array(
            [[float(v) for v in f.ds.ImagePositionPatient] for f in files], dtype=np.float64
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(
            f"{path}: DICOM slices lack a valid ImagePositionPatient; convert the series "
            "with dcm2niix first."
        ) from exc
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files, positions, along = [files[i] for i in order], positions[order], along[order]
    same = np.flatnonzero(np.diff(along) < 1e-6)
    if same.size:
        i = int(same[0])
        raise InputError(
            f"{path}: slices {files[i].name} and {files[i + 1].name} share one position "
            f"({along[i]:.2f} mm along the slice normal); is this one series? Remove the "
            "duplicate, or pass the series' own folder."
        )
    return files, positions, along


def _orientation(ds: Any) -> np.ndarray:
    """ImageOrientationPatient (row then column direction cosines, LPS+) as 6 floats."""
    return np.array(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=np.float64)


def _irregular_steps(along: np.ndarray) -> np.ndarray:
    """Indices i of the steps along[i] -> along[i + 1] that differ from the median step by
    more than :data:`DICOM_GAP_TOLERANCE` of it (gaps or uneven spacing)."""
    if along.size < 3:
        return np.zeros(0, dtype=int)
    steps = np.diff(along)
    median = float(np.median(steps))
    return np.flatnonzero(np.abs(steps - median) > DICOM_GAP_TOLERANCE * median)


def _check_spacing(
    path: Path, files: list[_DicomFile], along: np.ndarray, unreadable: list[tuple[str, str]]
) -> None:
    """Refuse gaps and uneven spacing, naming the positions and files around them."""
    bad = _irregular_steps(along)
    if not bad.size:
        return
    median = float(np.median(np.diff(along)))
    parts = [
        f"{along[i + 1] - along[i]:.2f} mm step from {along[i]:.2f} mm ({files[i].name}) to "
        f"{along[i + 1]:.2f} mm ({files[i + 1].name})"
        for i in bad[:3]
    ]
    more = f" and {bad.size - 3} more" if bad.size > 3 else ""
    unread = f"; unreadable files: {_describe(unreadable)}" if unreadable else ""
    raise InputError(
        f"{path}: slice gap or uneven spacing along the slice normal: {', '.join(parts)}{more}"
        f" (median step {median:.2f} mm){unread}; complete the series, or pass --dicom-gaps "
        "resample to interpolate it onto a uniform grid."
    )


def _float_tag(ds: Any, name: str, default: float) -> float:
    """A numeric DICOM tag as float; ``default`` when absent or empty."""
    value = ds.get(name, default)
    return default if value in (None, "") else float(value)


def _decode_slices(
    path: Path, files: list[_DicomFile], mode: str
) -> tuple[list[np.ndarray], list[int], list[tuple[str, str]]]:
    """Decode each slice to rows x cols float32 (RescaleSlope/Intercept applied, HU for CT).

    Returns the slices, the indices in ``files`` they come from, and (name, reason) of the
    slices dropped (only when ``mode`` is "resample"; in "error" mode an undecodable slice
    is an InputError naming it).
    """
    rows, cols = int(files[0].ds.Rows), int(files[0].ds.Columns)
    pixels, kept, dropped = [], [], []
    for i, file in enumerate(files):
        try:
            arr = file.ds.pixel_array
            if arr.shape != (rows, cols):
                raise ValueError(f"decoded shape {arr.shape}, expected {(rows, cols)}")
            slope = _float_tag(file.ds, "RescaleSlope", 1.0)
            intercept = _float_tag(file.ds, "RescaleIntercept", 0.0)
        except Exception as exc:  # pixel decoding errors come from several plugins
            if mode == "error":
                raise InputError(
                    f"{path}: cannot decode the pixel data of {file.name} ({_reason(exc)}); "
                    "replace that file, or pass --dicom-gaps resample to drop it and "
                    "interpolate."
                ) from exc
            logger.warning("%s: dropping %s: %s", path, file.name, _reason(exc))
            dropped.append((file.name, _reason(exc)))
            continue
        pixels.append(arr.astype(np.float32) * np.float32(slope) + np.float32(intercept))
        kept.append(i)
    if not pixels:
        raise InputError(
            f"{path}: no slice of the series can be decoded ({_describe(dropped)}); check "
            "that pylibjpeg and its plugins are installed, or convert the series with dcm2niix."
        )
    return pixels, kept, dropped


def _resample_slices(
    path: Path,
    pixels: list[np.ndarray],
    positions: np.ndarray,
    along: np.ndarray,
    max_voxels: int,
) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any]]:
    """Interpolate slices at uneven positions linearly onto a uniform grid.

    The grid runs from the first to the last true position (``along``, mm along the normal)
    with ``round(span / median step) + 1`` slices, so its step is the median step adjusted
    to end exactly on the last slice. Each grid slice blends its two neighbouring true
    slices; this is ``np.interp`` along every voxel column, done one output slice at a time
    (np.interp gives the fractional index, a two-term blend the values) so no temporary
    is larger than one slice.

    Returns:
        The grid's slices (rows x cols float32), their Nx3 positions (LPS+, mm, on the line
        from the first to the last true position) and the facts for ``Volume.meta``.
    """
    steps = np.diff(along)
    median = float(np.median(steps))
    span = float(along[-1] - along[0])
    count = int(round(span / median)) + 1
    rows, cols = pixels[0].shape
    check_voxels(count * rows * cols, max_voxels, f"{path}: resampled DICOM grid of {count} slices")
    grid = np.linspace(along[0], along[-1], count)
    index = np.interp(grid, along, np.arange(along.size))
    resampled = []
    for f in index:
        k = min(int(np.floor(f)), len(pixels) - 2)
        w = float(f - k)
        if w < 1e-6 or w > 1 - 1e-6:
            resampled.append(pixels[k + round(w)])
        else:
            resampled.append(pixels[k] * np.float32(1 - w) + pixels[k + 1] * np.float32(w))
    fraction = (grid - along[0]) / span
    grid_positions = positions[0] + fraction[:, None] * (positions[-1] - positions[0])
    step = span / (count - 1)
    logger.warning(
        "%s: slice gaps or uneven spacing (true steps %s mm); resampled %d slices linearly "
        "onto a uniform grid of %d slices %.4g mm apart",
        path,
        np.unique(np.round(steps, 3)).tolist(),
        len(pixels),
        count,
        step,
    )
    meta = {
        "dicom_gaps": "resampled",
        "true_positions_mm": [round(float(t), 4) for t in along],
        "grid_step_mm": step,
    }
    return resampled, grid_positions, meta


def _dicom_volume(ds: Any, pixels: list[np.ndarray], positions: np.ndarray, path: Path) -> Volume:
    """Stack sorted rows x cols slices at ``positions`` (Nx3, LPS+ mm, evenly spaced) in
    dcm2niix's grid (columns along i, rows along j flipped) and reorient to canonical."""
    iop = _orientation(ds)
    row_dir, col_dir = iop[:3], iop[3:]
    pixel_spacing = [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])]
    if len(pixels) > 1:
        slice_step = (positions[-1] - positions[0]) / (len(pixels) - 1)
    else:
        slice_step = np.cross(row_dir, col_dir) * (_float_tag(ds, "SliceThickness", 1.0) or 1.0)
    # (rows, cols) per slice -> array indexed [col, row, slice] in LPS+ patient coordinates.
    stack = np.stack(pixels, axis=-1).transpose(1, 0, 2)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]  # along a row: next column
    lps[:3, 1] = col_dir * pixel_spacing[0]  # down a column: next row
    lps[:3, 2] = slice_step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS+ -> RAS+
    # dcm2niix's grid: flip the row axis.
    stack = stack[:, ::-1, :]
    flip = np.eye(4)
    flip[1, 1] = -1
    flip[1, 3] = stack.shape[1] - 1
    affine = affine @ flip
    return _canonical(np.ascontiguousarray(stack), affine, "dicom", path)


# ----------------------------------------------------------------------------- 2D images


def read_image(path: Path, *, max_voxels: int = DEFAULT_MAX_VOXELS) -> Volume:
    """Read a 2D PNG/JPEG/TIFF/BMP image, grey or RGB, keeping its pixel values.

    ``data`` is HxWx1 (grey: uint8, 16-bit as uint16, 32-bit as int32 or float32) or HxWx3
    uint8 (RGB; RGBA, palette, CMYK, YCbCr, ... are converted to RGB). 1-bit images become
    0/255 uint8. The size is checked before the pixels are decoded (``max_voxels``,
    Pillow's decompression-bomb guard, :func:`check_plane_size`). A "Modality" PNG text
    chunk or TIFF info key, or "Modality=..." in a TIFF ImageDescription, sets ``modality``
    (``meta["modality_from"] = "image metadata"``). Only the first frame of multi-frame
    files is read.

    Raises:
        InputError: unreadable, too large, too small or too elongated, or an unsupported
            layout.
    """
    data, modality = _load_image(path, max_voxels)
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 3):
        raise InputError(f"{path}: unsupported image layout {data.shape}; use grey or RGB.")
    geometry = SourceGeometry(kind="image", shape=tuple(data.shape[:2]), affine=np.eye(4))
    volume = Volume(
        data=np.ascontiguousarray(data),
        affine=np.eye(4),
        spacing=(1.0, 1.0, 1.0),
        geometry=geometry,
        modality=modality,
        path=path,
    )
    if modality:
        volume.meta["modality_from"] = "image metadata"
    _replace_nonfinite(volume)
    return volume


def _load_image(path: Path, max_voxels: int) -> tuple[np.ndarray, str | None]:
    """The pixels (see :func:`read_image`) and the modality named in the image's metadata."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                check_voxels(width * height, max_voxels, f"{path} ({height}x{width} px)")
                check_plane_size((height, width), str(path))
                img.load()
                if getattr(img, "n_frames", 1) > 1:
                    logger.warning("%s holds %d frames; reading the first", path, img.n_frames)
                return _image_array(img), _image_modality(img, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(
            f"{path}: Pillow refuses it as a possible decompression bomb ({_reason(exc)}); "
            f"downscale it first (SAM works at {SAM_LONG_SIDE_PX} px anyway)."
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(
            f"{path}: cannot read image ({_reason(exc)}); re-export it as PNG or TIFF."
        ) from exc


def _image_array(img: Any) -> np.ndarray:
    """A loaded PIL image as a writable, native-endian array (HxW or HxWx3)."""
    if img.mode == "1":
        img = img.convert("L")  # numpy would give bool; 8-bit 0/255 like other masks
    elif img.mode not in ("L", "RGB", "I", "F") and not img.mode.startswith("I;16"):
        img = img.convert("RGB")  # RGBA, LA, P, PA, CMYK, YCbCr, LAB, HSV, ...
    data = np.array(img)
    if not data.dtype.isnative:  # e.g. I;16B (big-endian 16-bit)
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def _image_modality(img: Any, path: Path) -> str | None:
    """salip's modality named by a "Modality" metadata key (PNG text chunk, TIFF/other info)
    or by "Modality=..." / "Modality: ..." in a TIFF ImageDescription; else None."""
    values = [v for k, v in img.info.items() if isinstance(k, str) and k.lower() == "modality"]
    tags = getattr(img, "tag_v2", None)  # TIFF only
    description = tags.get(270) if tags is not None else None
    if isinstance(description, str):
        found = re.search(r"modality\s*[:=]\s*([\w-]+)", description, flags=re.IGNORECASE)
        values += [found.group(1)] if found else []
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        word = str(value).strip().lower()
        if word in _MODALITY_WORDS:
            return _MODALITY_WORDS[word]
        logger.debug("%s: metadata modality %r not known; ignored", path, value)
    return None
