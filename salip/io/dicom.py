"""The DICOM series reader (folder or zip): inventory, series selection, and the series
read into dcm2niix's grid (slice sorting, spacing checks and gap resampling:
:mod:`salip.io.dicom_grid`)."""

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

from salip.core.errors import InputError
from salip.io.checks import _reason, check_voxels
from salip.io.dicom_grid import (
    DicomFile,
    check_spacing,
    decode_slices,
    describe,
    dicom_volume,
    irregular_steps,
    resample_slices,
    sorted_slices,
    source_header,
)
from salip.io.volume import (
    _MODALITY_WORDS,
    DEFAULT_MAX_VOXELS,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    Volume,
)

__all__ = [
    "DICOM_GAP_MODES",
    "NOT_DICOM_NAMES",
    "NOT_DICOM_SUFFIXES",
    "clearly_not_dicom",
    "list_dicom_series",
    "read_dicom_series",
    "SeriesInfo",
]

# One logger for the whole package, as when it was one module (log lines and filters
# name "salip.io").
logger = logging.getLogger("salip.io")

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
class _Inventory:
    """What a DICOM folder or zip holds.

    Attributes:
        images: DICOM files with pixel data.
        unreadable: (name, reason) of files that may be DICOM images but cannot be read.
        ignored: names of files that are clearly not DICOM images (NIfTI, PNG, DICOMDIR, ...).
        total: number of files looked at.
    """

    images: list[DicomFile] = field(default_factory=list)
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
    files: list[DicomFile]


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
    (:func:`resample_slices`); ``meta`` then records ``dicom_gaps="resampled"``,
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
    files, positions, along = sorted_slices(path, files)
    if dicom_gaps == "error":
        check_spacing(path, files, along, inventory.unreadable)
    pixels, kept, undecodable = decode_slices(path, files, dicom_gaps)
    files, positions, along = [files[i] for i in kept], positions[kept], along[kept]
    meta: dict[str, Any] = {"series_uid": uid, "slices": len(files)}
    skipped = inventory.unreadable + undecodable
    if inventory.unreadable:
        meta["unreadable_files"] = [name for name, _ in inventory.unreadable]
    if irregular_steps(along).size:
        pixels, positions, gaps = resample_slices(path, pixels, positions, along, max_voxels)
        meta.update(gaps, slices=len(pixels), dropped_files=[name for name, _ in skipped])
    elif skipped:
        logger.warning("%s: skipped %d files: %s", path, len(skipped), describe(skipped))
    volume = dicom_volume(files[0].ds, pixels, positions, path)
    volume.meta = meta
    if "dicom_gaps" not in meta:  # the grid is the source slices': keep them for references
        volume.sources = [source_header(file.ds) for file in files]
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
            inventory.images.append(DicomFile(name, ds))
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
            f"({describe(inventory.unreadable)}); pass a folder or .zip holding one series."
        )
    names = ", ".join(inventory.ignored[:3])
    return (
        f"{path}: no DICOM image files among its {inventory.total} files (e.g. {names}); pass a "
        "folder or .zip holding one DICOM series."
    )


def _group_series(images: list[DicomFile]) -> list[_Series]:
    """Group slices by SeriesInstanceUID, orientation and size; largest group first."""
    groups: dict[tuple, list[DicomFile]] = {}
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
                files.append(DicomFile(name, ds))
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
) -> tuple[str, list[DicomFile]]:
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


def _check_series_header(path: Path, files: list[DicomFile], max_voxels: int) -> None:
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
