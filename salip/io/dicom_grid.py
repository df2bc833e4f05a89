"""From one DICOM series' files to one volume grid, as dcm2niix makes it: slices ordered
along the slice normal, spacing checked for gaps (or resampled onto an even grid), pixel data
decoded with its rescale, and the voxel-to-patient geometry; the reader that finds and
selects the series is :mod:`salip.io.dicom`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.errors import InputError
from salip.io.checks import _reason, check_voxels
from salip.io.orientation import _canonical
from salip.io.volume import Volume

__all__ = [
    "DICOM_GAP_TOLERANCE",
    "DicomFile",
    "check_spacing",
    "decode_slices",
    "describe",
    "dicom_volume",
    "irregular_steps",
    "resample_slices",
    "sorted_slices",
    "source_header",
]

# One logger for the whole package, as when it was one module (log lines and filters
# name "salip.io").
logger = logging.getLogger("salip.io")

#: A DICOM slice step (along the slice normal) that differs from the series' median step by
#: more than this fraction of it is a gap or uneven spacing.
DICOM_GAP_TOLERANCE = 0.01


@dataclass
class DicomFile:
    """One readable DICOM image: its name (relative to the folder, or in the zip) and data
    set (pixel data not yet decoded)."""

    name: str
    ds: Any


def describe(named: list[tuple[str, str]], limit: int = 3) -> str:
    """The first ``limit`` (name, reason) pairs as "name (reason), ...", then how many more."""
    text = ", ".join(f"{name} ({reason})" for name, reason in named[:limit])
    return text + (f" and {len(named) - limit} more" if len(named) > limit else "")


def sorted_slices(
    path: Path, files: list[DicomFile]
) -> tuple[list[DicomFile], np.ndarray, np.ndarray]:
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


def irregular_steps(along: np.ndarray) -> np.ndarray:
    """Indices i of the steps along[i] -> along[i + 1] that differ from the median step by
    more than :data:`DICOM_GAP_TOLERANCE` of it (gaps or uneven spacing)."""
    if along.size < 3:
        return np.zeros(0, dtype=int)
    steps = np.diff(along)
    median = float(np.median(steps))
    return np.flatnonzero(np.abs(steps - median) > DICOM_GAP_TOLERANCE * median)


def check_spacing(
    path: Path, files: list[DicomFile], along: np.ndarray, unreadable: list[tuple[str, str]]
) -> None:
    """Refuse gaps and uneven spacing, naming the positions and files around them."""
    bad = irregular_steps(along)
    if not bad.size:
        return
    median = float(np.median(np.diff(along)))
    parts = [
        f"{along[i + 1] - along[i]:.2f} mm step from {along[i]:.2f} mm ({files[i].name}) to "
        f"{along[i + 1]:.2f} mm ({files[i + 1].name})"
        for i in bad[:3]
    ]
    more = f" and {bad.size - 3} more" if bad.size > 3 else ""
    unread = f"; unreadable files: {describe(unreadable)}" if unreadable else ""
    raise InputError(
        f"{path}: slice gap or uneven spacing along the slice normal: {', '.join(parts)}{more}"
        f" (median step {median:.2f} mm){unread}; complete the series, or pass --dicom-gaps "
        "resample to interpolate it onto a uniform grid."
    )


def _float_tag(ds: Any, name: str, default: float) -> float:
    """A numeric DICOM tag as float; ``default`` when absent or empty."""
    value = ds.get(name, default)
    return default if value in (None, "") else float(value)


def decode_slices(
    path: Path, files: list[DicomFile], mode: str
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
            f"{path}: no slice of the series can be decoded ({describe(dropped)}); check "
            "that pylibjpeg and its plugins are installed, or convert the series with dcm2niix."
        )
    return pixels, kept, dropped


def resample_slices(
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


def source_header(ds: Any) -> Any:
    """A data set with every element of ``ds`` but its pixel data (the elements shared, not
    copied), and its file meta."""
    import pydicom

    header = pydicom.Dataset()
    for element in ds:
        if element.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(element)
    header.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
    return header


def dicom_volume(ds: Any, pixels: list[np.ndarray], positions: np.ndarray, path: Path) -> Volume:
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
