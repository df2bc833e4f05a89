"""Stage 1, volume I/O: read NIfTI, DICOM series and 2D images into one canonical form.

Volumes are reoriented to canonical RAS+ on the way in (nibabel's orientation tools) and the
:class:`SourceGeometry` remembers how to undo it, so that :mod:`salip.writing` can return
masks in the input's exact grid. DICOM series are first put in the grid dcm2niix (and so
TotalSegmentator) writes for them: columns along i, rows along j flipped (LAS for an axial
series), slices sorted along the slice normal.
"""

from __future__ import annotations

import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salip.errors import InputError

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def file_stem(path: str | Path) -> str:
    """File name of ``path`` without its extension; ".nii.gz" (any case) counts as one."""
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    return Path(name).stem


_DICOM_MODALITY = {"CT": "ct", "MR": "mr", "US": "us", "CR": "xray", "DX": "xray", "DR": "xray"}


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
            for 2D images HxWxC (C = 1 or 3) in their stored dtype, untouched.
        affine: 4x4 voxel-to-world matrix of ``data`` (canonical RAS+; identity for images).
        spacing: voxel size in mm along the axes of ``data`` ((1, 1, 1) if unknown).
        geometry: how to undo the canonical reorientation.
        modality: "ct", "mr", "xray" or "us" when the file says so (DICOM), else None.
        path: the input path.
        meta: extra facts for the report (series UID, slice count, ...).
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    geometry: SourceGeometry
    modality: str | None
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

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


def read_input(path: str | Path, *, channel: int | None = None) -> Volume:
    """Read any supported input.

    Args:
        path: a NIfTI file, a DICOM folder or .zip, or a 2D image.
        channel: for a 4D NIfTI file holding several volumes (e.g. the MR sequences of a
            Medical Segmentation Decathlon case), the index along its 4th axis of the
            volume to read. Ignored for other inputs.

    Raises:
        InputError: missing, unreadable, corrupt, 4D without ``channel`` or otherwise
            unsupported input.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    kind = input_kind(path)
    if kind == "nifti":
        return read_nifti(path, channel=channel)
    if kind == "dicom":
        return read_dicom_series(path)
    return read_image(path)


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


def read_nifti(path: Path, *, channel: int | None = None) -> Volume:
    """Read a 2D or 3D NIfTI file; of a 4D file, volume ``channel`` (or its only volume)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise InputError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}).") from exc
    header = img.header.copy()
    if data.ndim == 4 and (channel is not None or data.shape[3] == 1):
        index = channel or 0
        if not 0 <= index < data.shape[3]:
            raise InputError(
                f"{path}: channel {index} out of range; the file holds {data.shape[3]} "
                f"volumes (0..{data.shape[3] - 1})."
            )
        data = data[..., index]
        header.set_data_shape(data.shape)
    if data.ndim not in (2, 3):
        raise InputError(
            f"{path}: {data.ndim}D image of shape {data.shape}; salip segments 2D and 3D "
            "images only. Extract one volume first (e.g. with fslroi or nibabel)."
        )
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise InputError(f"{path}: unsupported voxel type {data.dtype}.")
    volume = _canonical(data, img.affine, "nifti", path, header=header)
    logger.info(
        "read %s: shape %s, orientation %s", path, data.shape, "".join(nib.aff2axcodes(img.affine))
    )
    return volume


def _dicom_datasets(path: Path) -> list[Any]:
    """All DICOM datasets with pixel data in a folder (recursively) or a zip."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    datasets = []

    def _read(source: Any, name: str) -> None:
        try:
            ds = pydicom.dcmread(source)
        except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
            logger.debug("skip %s: not DICOM (%s)", name, exc)
            return
        if "PixelData" in ds:
            datasets.append(ds)

    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            _read(str(file), str(file))
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        _read(io.BytesIO(archive.read(info)), info.filename)
        except zipfile.BadZipFile as exc:
            raise InputError(f"{path}: not a valid zip file ({exc}).") from exc
    return datasets


def read_dicom_series(path: Path) -> Volume:
    """Read a DICOM series from a folder or a zip.

    The series with the most slices is used when several are present. Slices are sorted by
    their position along the slice normal, and RescaleSlope/RescaleIntercept are applied.
    """
    datasets = _dicom_datasets(path)
    if not datasets:
        raise InputError(f"{path}: no DICOM image files found.")
    series: dict[tuple, list[Any]] = {}
    for ds in datasets:
        iop = tuple(
            round(float(v), 4) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
        )
        key = (str(ds.get("SeriesInstanceUID", "")), iop, int(ds.Rows), int(ds.Columns))
        series.setdefault(key, []).append(ds)
    key, slices = max(series.items(), key=lambda item: len(item[1]))
    if len(series) > 1:
        logger.warning(
            "%s holds %d series; using the largest (%d slices, SeriesInstanceUID %r)",
            path,
            len(series),
            len(slices),
            key[0],
        )
    iop = np.array(key[1], dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    try:
        positions = [np.array(ds.ImagePositionPatient, dtype=np.float64) for ds in slices]
    except AttributeError as exc:
        raise InputError(f"{path}: DICOM slices lack ImagePositionPatient.") from exc
    order = np.argsort([float(p @ normal) for p in positions], kind="stable")
    slices = [slices[i] for i in order]
    positions = [positions[i] for i in order]
    pixel_spacing = [float(v) for v in slices[0].get("PixelSpacing", [1.0, 1.0])]
    if len(slices) > 1:
        steps = np.diff([p @ normal for p in positions])
        if np.any(np.abs(steps) < 1e-6):
            raise InputError(f"{path}: several slices share one position; is this one series?")
        slice_step = positions[1] - positions[0]
        if np.ptp(steps) > 0.01 * max(abs(np.median(steps)), 1e-6):
            logger.warning("%s: uneven slice spacing (%s mm); using the first step", path, steps)
    else:
        slice_step = normal * float(slices[0].get("SliceThickness", 1.0))

    try:
        pixels = []
        for ds in slices:
            arr = ds.pixel_array.astype(np.float32)
            slope = float(ds.get("RescaleSlope", 1.0))
            intercept = float(ds.get("RescaleIntercept", 0.0))
            pixels.append(arr * slope + intercept)
    except Exception as exc:  # pixel decoding errors come from several plugins
        raise InputError(f"{path}: cannot decode DICOM pixel data ({exc}).") from exc
    if pixels[0].ndim != 2:
        raise InputError(f"{path}: multi-frame or colour DICOM is not supported.")
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
    volume = _canonical(np.ascontiguousarray(stack), affine, "dicom", path)
    volume.modality = _DICOM_MODALITY.get(str(slices[0].get("Modality", "")).upper())
    volume.meta = {"series_uid": key[0], "slices": len(slices)}
    logger.info("read DICOM series %s: %d slices of %dx%d", path, len(slices), *key[2:])
    return volume


def read_image(path: Path) -> Volume:
    """Read a 2D PNG/JPEG/TIFF/BMP image, grey or RGB(A), keeping its pixels as stored."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            data = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: cannot read image ({exc}).") from exc
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3 or data.shape[2] not in (1, 3):
        raise InputError(f"{path}: unsupported image layout {data.shape}; use grey or RGB.")
    geometry = SourceGeometry(kind="image", shape=tuple(data.shape[:2]), affine=np.eye(4))
    return Volume(
        data=data,
        affine=np.eye(4),
        spacing=(1.0, 1.0, 1.0),
        geometry=geometry,
        modality=None,
        path=path,
    )
