"""A dataset case (:class:`DatasetCase`), and its reference masks and full label map, read in the
image file's own grid."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salip.apps.bench.datasets.common import _SOURCE_HINT, _is_nifti
from salip.core.errors import BenchmarkError, InputError, OrganError
from salip.core.organs import get_organ
from salip.io import file_stem, read_dicom_series

__all__ = [
    "DatasetCase",
    "image_shape",
    "load_label_map",
    "load_reference",
    "load_references",
    "mask_threshold",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetCase:
    """One image of a benchmark dataset and where its reference masks are.

    Build cases with :func:`load_dataset`; the fields after ``organs`` are what the loaders
    need and are set per kind.

    Attributes:
        dataset: the dataset's name (its config ``name``).
        case_id: identifier unique within the dataset (image stem, case folder, ...).
        image: the image file, or DICOM series folder or zip, to segment (absolute path);
            references are in its grid.
        organs: vocabulary organs to score, in order.
        kind: the dataset kind (one of :data:`KINDS`).
        modality: "ct", "mr", ... from the dataset's ``modality`` key or its label set, else
            None (detected from the image).
        channel: for 4D (multi-modal) NIfTI images, the index along the 4th axis of the
            volume to segment (MSD; default 0); None for other kinds.
        approximate: organ -> why its reference is a related, not identical, structure.
        label: multi-label reference file (nifti-multilabel, msd); None otherwise.
        values: organ -> label values in ``label`` whose union is the organ.
        files: organ -> binary mask files whose union is the organ (nifti-per-organ,
            image-mask-pairs).
        threshold: a mask value above this is foreground; None: automatic, see
            :func:`mask_threshold` (image-mask-pairs).
        fill_outline: fill closed outlines after thresholding (image-mask-pairs).
        label_names: label value -> class name of every label of ``label`` (the dataset's
            names after its ``organ_map``; a label set's organ names), for
            :func:`load_label_map`.
        label_dir: the folder of one binary mask per class, ``<class>.nii.gz``
            (nifti-per-organ), for :func:`load_label_map`; None otherwise.
        organ_map: dataset class name -> vocabulary organ (the config's ``organ_map``),
            naming the classes of ``label_dir``.
    """

    dataset: str
    case_id: str
    image: Path
    organs: tuple[str, ...]
    kind: str
    modality: str | None = None
    channel: int | None = None
    approximate: dict[str, str] = field(default_factory=dict, hash=False)
    label: Path | None = None
    values: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False, repr=False)
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict, hash=False, repr=False)
    threshold: float | None = None
    fill_outline: bool = False
    label_names: dict[int, str] = field(default_factory=dict, hash=False, repr=False)
    label_dir: Path | None = None
    organ_map: dict[str, str] = field(default_factory=dict, hash=False, repr=False)

    @property
    def key(self) -> str:
        """``dataset/case_id``, for messages and reports."""
        return f"{self.dataset}/{self.case_id}"

    def shape(self) -> tuple[int, ...]:
        """The image's array shape; see :func:`image_shape`."""
        return image_shape(self)

    def reference(self, organ: str) -> np.ndarray:
        """The reference mask of ``organ``; see :func:`load_reference`."""
        return load_reference(self, organ)

    def references(self, organs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Reference masks of several organs; see :func:`load_references`."""
        return load_references(self, organs)

    def label_map(self) -> tuple[np.ndarray, dict[int, str]]:
        """The full reference label map and its names; see :func:`load_label_map`."""
        return load_label_map(self)


def mask_threshold(mask: np.ndarray) -> float:
    """Default foreground threshold of a binary mask: a pixel is foreground if above it.

    Half the full scale of the mask's values: 0.5 when its maximum is at most 1 (0/1
    masks), 127.5 when at most 255 (0/255 8-bit masks), 32767.5 when at most 65535 (16-bit
    masks), else half its maximum.
    """
    top = float(np.max(mask)) if mask.size else 0.0
    for scale in (1.0, 255.0, 65535.0):
        if top <= scale:
            return 0.5 * scale
    return 0.5 * top


def _fail(case: DatasetCase, message: str) -> BenchmarkError:
    return BenchmarkError(f"case {case.key}: {message}")


def _image_grid(case: DatasetCase) -> tuple[tuple[int, ...], np.ndarray | None]:
    """Shape of the image's array (and its affine for NIfTI), read from the header only."""
    path = case.image
    if not path.exists():
        raise _fail(case, f"image {path} not found; fix the dataset's paths or remove the case.")
    if path.is_dir() or path.name.lower().endswith(".zip"):
        return _dicom_grid(case, path)
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(str(path))
            shape, affine = tuple(int(s) for s in img.shape), np.asarray(img.affine)
        else:
            from PIL import Image

            with Image.open(path) as pil:
                width, height = pil.size
            return (height, width), None
    except Exception as exc:  # nibabel and PIL raise many types for corrupt files
        raise _fail(case, f"cannot read image {path} ({type(exc).__name__}: {exc}).") from exc
    if len(shape) == 4:
        channel = case.channel or 0
        if channel >= shape[3]:
            raise _fail(
                case,
                f"channel {channel} out of range: {path} holds {shape[3]} volumes; set "
                f"`channel` to 0..{shape[3] - 1}.",
            )
        shape = shape[:3]
    elif len(shape) not in (2, 3):
        raise _fail(case, f"image {path} has shape {shape}; expected a 2D, 3D or 4D volume.")
    return shape, affine


def _dicom_grid(case: DatasetCase, path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of the grid dcm2niix writes for a DICOM series (read once per
    series and modification time: the series is decoded)."""
    try:
        shape, affine = _read_dicom_grid(str(path), path.stat().st_mtime_ns)
    except InputError as exc:
        raise _fail(case, f"cannot read DICOM series {path}: {exc}") from exc
    return shape, affine.copy()


@functools.lru_cache(maxsize=4)
def _read_dicom_grid(path: str, mtime_ns: int) -> tuple[tuple[int, ...], np.ndarray]:
    geometry = read_dicom_series(Path(path)).geometry
    return tuple(int(n) for n in geometry.shape), np.asarray(geometry.affine)


def image_shape(case: DatasetCase) -> tuple[int, ...]:
    """Shape of the case image's array, read cheaply (NIfTI header, PIL size).

    XxYxZ (or XxY) as stored for NIfTI, the first 3 dims of a 4D (multi-modal) volume; HxW
    for 2D images; the dcm2niix grid of a DICOM series (which is read for it).

    Raises:
        BenchmarkError: missing or unreadable image; a channel beyond a 4D image's volumes.
    """
    return _image_grid(case)[0]


def _read_array(case: DatasetCase, path: Path, shape: tuple[int, ...], affine: Any) -> np.ndarray:
    """A reference file's array, checked against the image shape (trailing 1s ignored)."""
    if not path.is_file():
        raise _fail(case, f"reference file {path} not found; {_SOURCE_HINT[case.kind]}.")
    try:
        if _is_nifti(path):
            import nibabel as nib

            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
            if affine is not None and not np.allclose(img.affine, affine, atol=1e-3, rtol=1e-3):
                logger.warning(
                    "case %s: %s and the image have different affines; comparing voxel "
                    "arrays as stored",
                    case.key,
                    path.name,
                )
        else:
            from PIL import Image

            with Image.open(path) as pil:
                data = np.asarray(pil.convert("L") if pil.mode == "CMYK" else pil)
            if data.ndim == 3:  # colour mask: first channel
                data = data[..., 0]
    except Exception as exc:  # nibabel and PIL raise many types for corrupt files
        raise _fail(case, f"cannot read reference {path} ({type(exc).__name__}: {exc}).") from exc
    if data.shape != shape:
        if _strip_ones(data.shape) == _strip_ones(shape):  # e.g. XxYxZx1 against XxYxZ
            data = data.reshape(shape)
        else:
            raise _fail(
                case,
                f"reference {path} has shape {data.shape} but the image {case.image.name} has "
                f"{shape}; references must be in the image file's grid.",
            )
    return data


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    while shape and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _binary(case: DatasetCase, data: np.ndarray) -> np.ndarray:
    threshold = case.threshold if case.threshold is not None else mask_threshold(data)
    mask = data > threshold
    if case.fill_outline:
        from scipy import ndimage

        mask = ndimage.binary_fill_holes(mask)
    return mask


def load_references(
    case: DatasetCase, organs: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Reference masks of ``organs`` (default: all of the case's), reading each file once.

    Returns:
        organ -> bool array in the image file's grid: XxYxZ (or XxY) for NIfTI images, HxW
        for 2D images.

    Raises:
        BenchmarkError: an organ the case does not score, a missing or unreadable image or
            reference file, a reference whose shape differs from the image's.
    """
    names = []
    for organ in case.organs if organs is None else organs:
        try:
            name = get_organ(organ).name
        except OrganError as exc:
            raise _fail(case, str(exc)) from exc
        if name not in case.organs:
            raise _fail(case, f"no reference for '{name}'; it has: {', '.join(case.organs)}.")
        names.append(name)
    shape, affine = _image_grid(case)
    if case.label is not None:
        labels = _read_array(case, case.label, shape, affine)
        return {name: np.isin(labels, case.values[name]) for name in names}
    cache: dict[Path, np.ndarray] = {}
    result = {}
    for name in names:
        mask = np.zeros(shape, dtype=bool)
        for path in case.files[name]:
            if path not in cache:
                cache[path] = _binary(case, _read_array(case, path, shape, affine))
            mask |= cache[path]
        result[name] = mask
    return result


def load_reference(case: DatasetCase, organ: str) -> np.ndarray:
    """The reference mask of ``organ``: a bool array in the image file's grid.

    XxYxZ (XxY) as stored for NIfTI images (the first 3 dims of a 4D image), HxW for 2D
    images. Raises BenchmarkError like :func:`load_references`.
    """
    return next(iter(load_references(case, [organ]).values()))


def load_label_map(case: DatasetCase) -> tuple[np.ndarray, dict[int, str]]:
    """The case's FULL reference label map, every label and not only the scored organs, and
    its label value -> class name table.

    Multi-label kinds (nifti-multilabel, msd) give their label file as stored, named by
    :attr:`DatasetCase.label_names`; nifti-per-organ stacks every ``<class>.nii.gz`` of the case's
    ``segmentations/`` folder, class ``k`` (sorted by file name, from 1) taking value ``k``
    (where masks overlap, the later class wins), named by file name through ``organ_map``.

    Returns:
        ``(labels, names)``: a non-negative integer array in the image file's grid (as
        :func:`load_references`), and value -> class name (values without a name are
        unnamed).

    Raises:
        BenchmarkError: a kind without a full label map (image-mask-pairs), a missing or
            unreadable image or label file, a shape that differs from the image's,
            non-integer labels.
    """
    shape, affine = _image_grid(case)
    if case.label is not None:
        labels = _read_array(case, case.label, shape, affine)
        if not np.issubdtype(labels.dtype, np.integer):
            if not np.array_equal(labels, np.round(labels)) or labels.min(initial=0) < 0:
                raise _fail(case, f"label file {case.label} holds non-integer labels.")
            labels = labels.astype(np.int32)
        return labels, dict(case.label_names)
    if case.label_dir is not None:
        return _stacked_labels(case, shape, affine)
    raise _fail(
        case,
        f"{case.kind} datasets have no full label map (only each image's "
        f"{'/'.join(case.organs)} mask); methods that need one (simulated) take "
        "nifti-multilabel, msd or nifti-per-organ datasets.",
    )


def _stacked_labels(
    case: DatasetCase, shape: tuple[int, ...], affine: Any
) -> tuple[np.ndarray, dict[int, str]]:
    """nifti-per-organ: one label value per class file of the case's folder."""
    folder = case.label_dir
    assert folder is not None
    files = sorted(p for p in folder.iterdir() if _is_nifti(p)) if folder.is_dir() else []
    if not files:
        raise _fail(case, f"no <class>.nii.gz file in {folder}; {_SOURCE_HINT[case.kind]}.")
    labels = np.zeros(shape, dtype=np.uint16 if len(files) > 255 else np.uint8)
    names: dict[int, str] = {}
    for value, path in enumerate(files, start=1):
        labels[_binary(case, _read_array(case, path, shape, affine))] = value
        names[value] = case.organ_map.get(file_stem(path), file_stem(path))
    return labels, names
