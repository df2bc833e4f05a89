"""The NIfTI reader: header, size and affine checks before any voxel is read."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.errors import InputError
from salip.io.checks import _reason, _replace_nonfinite, check_voxels
from salip.io.orientation import _canonical
from salip.io.volume import DEFAULT_MAX_VOXELS, Volume

__all__ = [
    "AFFINE_AGREEMENT_MM",
    "GZIP_MAX_RATIO",
    "MAX_AFFINE_CONDITION",
    "read_nifti",
]

# One logger for the whole package, as when it was one module (log lines and filters
# name "salip.io").
logger = logging.getLogger("salip.io")

#: Highest possible deflate compression ratio (zlib's technical limit is about 1032:1), so
#: a .nii.gz whose header claims more than this times its own size must be truncated.
GZIP_MAX_RATIO = 1032

#: An affine's 3x3 part with a larger condition number counts as singular (a zero or
#: repeated axis); real scanner grids, even oblique or sheared, are far below it.
MAX_AFFINE_CONDITION = 1e8

#: sform and qform differing by more than this (largest entry, mm) "disagree".
AFFINE_AGREEMENT_MM = 1e-3


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
    stored = tuple(header.get_data_shape())
    if stored[: data.ndim] != data.shape or any(n != 1 for n in stored[data.ndim :]):
        header.set_data_shape(data.shape)  # one volume of a 4D file: a 3D header
    # else the header keeps trailing singleton axes (X,Y,Z,1), and so do the masks
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
    stored = tuple(int(n) for n in img.header.get_data_shape())
    shape = stored
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if channel is not None and len(stored) < 4:
        raise InputError(
            f"{path}: --channel is for 4D files, and this one is {len(stored)}D {stored}; "
            "drop --channel."
        )
    if channel not in (None, 0) and len(shape) < 4:
        raise InputError(
            f"{path}: channel {channel} out of range; the file holds 1 volume: pass "
            "--channel 0, or drop it."
        )
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
