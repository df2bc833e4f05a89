"""The DICOM series reader (folder or zip): inventory, series selection, slice sorting,
spacing checks and gap resampling, in dcm2niix's grid."""

from __future__ import annotations

import io
import logging
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.errors import InputError
from salip.io.checks import _reason, check_voxels
from salip.io.orientation import _canonical
from salip.io.volume import (
    _MODALITY_WORDS,
    DEFAULT_MAX_VOXELS,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
)

# One logger for the whole package, as when it was one module (log lines and filters
# name "salip.io").
logger = logging.getLogger("salip.io")

#: A DICOM slice step (along the slice normal) that differs from the series' median step by
#: more than this fraction of it is a gap or uneven spacing.
DICOM_GAP_TOLERANCE = 0.01

#: How ``read_input(dicom_gaps=...)`` (``--dicom-gaps``) treats gaps and uneven spacing.
DICOM_GAP_MODES = ("error", "resample")

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
    if "dicom_gaps" not in meta:  # the grid is the source slices': keep them for references
        volume.sources = [_header(file.ds) for file in files]
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


def clearly_not_dicom(name: str) -> bool:
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
        if clearly_not_dicom(name):
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


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a DICOM folder or zip, as :func:`list_dicom_series` finds it.

    Attributes:
        label: what ``read_dicom_series(series=...)`` (``--series``) takes to read it.
        description: its SeriesDescription ("" when absent).
        slices: number of image files.
    """

    label: str
    description: str
    slices: int


def list_dicom_series(path: Path, max_voxels: int = DEFAULT_MAX_VOXELS) -> list[SeriesInfo]:
    """The image series of a DICOM folder (recursively) or zip, largest first, from the file
    headers only (pixel data is not read). Files that cannot be parsed, and objects that are
    not images (a DICOM SEG, a structure set), are left out; the reader reports them when
    the series is read."""
    import pydicom

    files = []
    with _quiet_pydicom():
        for name, opener in _dicom_sources(path, max_voxels):
            if clearly_not_dicom(name):
                continue
            try:
                ds = pydicom.dcmread(opener(), stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
                continue
            sop = ds.get("SOPClassUID") or getattr(ds, "file_meta", {}).get(
                "MediaStorageSOPClassUID"
            )
            if "Rows" in ds and "Columns" in ds and (not sop or _is_image_storage(ds)):
                files.append(_DicomFile(name, ds))
    return [SeriesInfo(g.label, g.description, len(g.files)) for g in _group_series(files)]


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


def _header(ds: Any) -> Any:
    """A data set with every element of ``ds`` but its pixel data (the elements shared, not
    copied), and its file meta."""
    import pydicom

    header = pydicom.Dataset()
    for element in ds:
        if element.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            header.add(element)
    header.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
    return header


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
