"""Per-organ statistics of a label map over its input image (``--statistics PATH``).

:func:`organ_statistics` is pure: it takes the input's intensities and the label map as
written to the mask file, both in the INPUT FILE's grid (as stored, see
:func:`salip.io.orientation.to_source_grid`), with that grid's voxel -> world affine, and
returns a JSON-ready dict (no NaN, no numpy types). The pipeline writes it to the
``--statistics`` file and embeds it in the run report.

Conventions (also spelled out in the result's ``"convention"`` string):

- Indices are of the input file's array, one per array axis (i, j, k for a volume; row,
  column for a 2D image), 0-based.
- World coordinates are RAS+ in millimetres (nibabel's convention: x to the Right, y to the
  Anterior, z to the Superior); DICOM's LPS coordinates are (-x, -y, z). They are voxel
  centres mapped by the affine, ``affine @ [i, j, k, 1]``.
- 2D images (PNG, JPEG, ...) have no spacing: their volume, mm area and world coordinates
  are None, their area is given in pixels, their intensity is the grey value (the mean over
  the channels for RGB) and they are one slice (index 0).
- Floats are rounded to :data:`DECIMALS` (4) decimal places, volumes in ml to
  :data:`VOLUME_DECIMALS` (6, i.e. 0.001 mm3), so a value is within half a unit of its last
  decimal (5e-5) of the exact one.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import Any

import numpy as np

from salip.core.errors import InputError, OutputError

__all__ = [
    "CONVENTION",
    "DECIMALS",
    "VOLUME_DECIMALS",
    "organ_statistics",
]

#: Decimal places of every float in the result except volumes in ml.
DECIMALS = 4

#: Decimal places of ``volume_ml`` (1e-6 ml = 0.001 mm3).
VOLUME_DECIMALS = 6

#: Label values up to this use one :func:`scipy.ndimage.find_objects` pass over the map;
#: larger ones are located one by one (find_objects allocates a list as long as the largest).
_FIND_OBJECTS_MAX_LABEL = 2**16

CONVENTION = (
    "Indices (bbox_voxels, centroid_voxels, slices) are 0-based indices of the input file's "
    "array as stored, one per array axis (i, j, k for volumes; row, column for 2D images). "
    "World coordinates (bbox_mm, centroid_mm) are RAS+ in mm (nibabel's convention; DICOM "
    "LPS is (-x, -y, z)), voxel centres mapped by the input's affine: centroid_mm = affine @ "
    "centroid_voxels; bbox_mm is the axis-aligned world box of the 8 corners of the "
    "voxel-centre bounding box bbox_voxels (min/max inclusive). volume_ml = voxels * "
    "|det(affine[:3, :3])| / 1000. Intensities are in the input's units, over the organ's "
    "voxels with a finite value: std is the population std (ddof=0), median/p5/p95 are "
    "numpy percentiles (linear interpolation); for RGB images the grey value is the mean over "
    "the channels. components counts connected components with full connectivity (26 "
    "neighbours in 3D, 8 in 2D). 2D images have no spacing: volume_ml, area_mm2, bbox_mm and "
    "centroid_mm are None, area_px is the pixel count and the image is slice 0 (slices.axis "
    "None). Empty organs "
    "have voxels 0, components 0, empty slices and None elsewhere. Floats are rounded to 4 "
    "decimals (volume_ml to 6). confidence (where the run gives one) is the estimated "
    "probability that the organ's answer is right; found is false for an organ answered "
    "'not found' (reason says why), which has no voxels."
)


def organ_statistics(
    image: np.ndarray,
    labels: np.ndarray,
    label_values: Mapping[str, int],
    affine: np.ndarray,
    *,
    is_2d: bool,
    slice_axis: int | None,
    units: str,
    finite: np.ndarray | None = None,
    answers: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Volume, intensity, extent, centroid, components and slices of each organ, and the
    run's answer for it.

    Args:
        image: the input's intensities in the input file's grid (as stored), in its units
            (HU for CT), any real dtype. Volumes: the shape of ``labels`` (XxYxZ, or XxY for
            a 2D NIfTI). 2D images: HxW, or HxWxC (C = 1 or 3; RGB is averaged to grey).
        labels: integer (or bool) label map of the same grid (HxW for 2D images), as
            written to the mask file; 0 is background.
        label_values: organ name -> its label value (a positive integer) in ``labels``.
        affine: 4x4 voxel -> world (RAS+, mm) matrix of that grid; ignored for 2D images
            (identity there).
        is_2d: True for 2D images (no spacing: volumes, mm areas and world coordinates are
            None).
        slice_axis: the axis of the input array that slices run along (from
            :func:`salip.io.orientation.source_slice_indices`); required for volumes, ignored
            for 2D images (slice 0). For a 2D NIfTI (XxY) axis 2 is the single slice 0.
        units: the intensities' units, copied into the result (e.g. "HU").
        finite: optional bool array of ``image``'s shape, True where the file's value was
            finite (:attr:`salip.io.Volume.finite_mask` in the input's grid); voxels where it
            is False (and any non-finite value in ``image``) are left out of the intensity
            statistics but still counted in the organ's size.
        answers: optional organ name -> the run's answer for it: ``confidence`` (float in
            [0, 1], or None where the run gives none), ``found`` (bool) and ``reason`` (why
            not found); copied into the organ's entry (``reason`` only when not found).

    Returns:
        ``{"convention": str, "units": units, "organs": {name: stats}}``, JSON-ready, in
        ``label_values``' order; see :func:`_organ_entry` for one organ's fields and
        :data:`CONVENTION` for their meaning.

    Raises:
        OutputError: ``labels`` does not match ``image`` or is not integer, a label value is
            not a positive integer, or ``slice_axis`` is missing or out of range.
        InputError: the affine is not a finite, invertible 4x4 matrix.
    """
    labels = np.asarray(labels)
    grey, finite_grey = _grey(image, labels, is_2d, finite)
    values = _check_label_values(label_values)
    ndim = labels.ndim
    lab3, grey3, finite3 = (_pad3(a) for a in (labels, grey, finite_grey))
    axis = _check_slice_axis(slice_axis, is_2d)
    matrix = None if is_2d else _check_affine(affine)
    boxes = _locate(lab3, sorted(set(values.values())))
    organs = {
        name: _organ_entry(
            lab3, grey3, finite3, value, boxes[value], matrix=matrix, axis=axis, ndim=ndim
        )
        for name, value in values.items()
    }
    for name, given in (answers or {}).items():
        if name in organs:
            organs[name].update(_answer(given))
    return {"convention": CONVENTION, "units": str(units), "organs": organs}


def _answer(given: Mapping[str, Any]) -> dict[str, Any]:
    """An organ's ``confidence``, ``found`` and (when not found) ``reason``, JSON-ready."""
    confidence = given.get("confidence")
    fields: dict[str, Any] = {
        "confidence": None if confidence is None else _round(float(confidence)),
        "found": bool(given.get("found", True)),
    }
    if not fields["found"]:
        fields["reason"] = str(given.get("reason") or "")
    return fields


def _grey(
    image: np.ndarray, labels: np.ndarray, is_2d: bool, finite: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` as an array of ``labels``' shape (2D images with channels averaged to
    float64 grey; volumes untouched, not copied) and ``finite`` likewise (or None)."""
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise OutputError(
            f"the label map has dtype {labels.dtype}, not integer; pass the label map as "
            "written to the mask file (uint8 labels)."
        )
    if labels.ndim not in (2, 3) or (is_2d and labels.ndim != 2):
        want = "HxW" if is_2d else "XxYxZ or XxY"
        raise OutputError(
            f"the label map has shape {labels.shape}, not {want}; pass it in the input "
            "file's grid (salip.io.to_source_grid)."
        )
    channels = is_2d and image.ndim == 3
    if image.shape[: labels.ndim] != labels.shape or image.ndim != labels.ndim + channels:
        raise OutputError(
            f"the image of shape {image.shape} and the label map of shape {labels.shape} are "
            "not in one grid; pass both in the input file's grid (salip.io.to_source_grid)."
        )
    if finite is not None and np.shape(finite) != image.shape:
        raise OutputError(
            f"the finite mask of shape {np.shape(finite)} does not match the image's "
            f"{image.shape}; pass Volume.finite_mask in the input file's grid, or None."
        )
    grey, finite = image, None if finite is None else np.asarray(finite, dtype=bool)
    if channels:
        grey = image.mean(axis=2, dtype=np.float64)
        finite = None if finite is None else np.all(finite, axis=2)
    return grey, finite


def _check_label_values(label_values: Mapping[str, int]) -> dict[str, int]:
    """``label_values`` as name -> int, each a positive integer."""
    values = {}
    for name, value in label_values.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or int(value) < 1:
            raise OutputError(
                f"organ {name!r} has label value {value!r}; label values are positive "
                "integers (0 is the background), fix the organ -> label mapping."
            )
        values[str(name)] = int(value)
    return values


def _check_slice_axis(slice_axis: int | None, is_2d: bool) -> int:
    """The slice axis of the label map padded to 3D: ``slice_axis`` for volumes, 2 (the
    padded axis, so the single slice 0) for 2D images."""
    if is_2d:
        return 2
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, Integral):
        raise OutputError(
            f"slice_axis is {slice_axis!r}; volumes need the input array's slice axis (0, 1 "
            "or 2, from salip.io.source_slice_indices)."
        )
    if not 0 <= int(slice_axis) < 3:
        raise OutputError(f"slice_axis {slice_axis} is out of range; use 0, 1 or 2.")
    return int(slice_axis)


def _check_affine(affine: np.ndarray) -> np.ndarray:
    """``affine`` as a float64 4x4 matrix, refused unless finite with an invertible 3x3."""
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(
            f"the input's affine (shape {matrix.shape}) is not a finite 4x4 matrix; fix the "
            "file's header (qform/sform) or re-export it."
        )
    if abs(float(np.linalg.det(matrix[:3, :3]))) == 0.0:
        raise InputError(
            "the input's affine is singular (zero voxel volume); fix the file's header "
            "(pixdim, qform/sform) or re-export it."
        )
    return matrix


def _pad3(array: np.ndarray | None) -> np.ndarray | None:
    """A 2D array as XxYx1 (like nibabel pads a 2D NIfTI); 3D arrays and None unchanged."""
    if array is None or array.ndim == 3:
        return array
    return array.reshape(array.shape + (1,) * (3 - array.ndim))


def _locate(labels: np.ndarray, values: list[int]) -> dict[int, tuple[slice, ...] | None]:
    """Each label value -> the slices of its bounding box in ``labels``, or None if absent."""
    from scipy import ndimage

    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    small = [v for v in values if v <= _FIND_OBJECTS_MAX_LABEL]
    boxes: dict[int, tuple[slice, ...] | None] = {}
    if small:
        found = ndimage.find_objects(labels, max_label=max(small))
        boxes.update({v: found[v - 1] for v in small})
    for v in values:
        if v > _FIND_OBJECTS_MAX_LABEL:
            where = np.nonzero(labels == v)
            present = where[0].size > 0
            boxes[v] = (
                tuple(slice(int(w.min()), int(w.max()) + 1) for w in where) if present else None
            )
    return boxes


def _organ_entry(
    labels: np.ndarray,
    grey: np.ndarray,
    finite: np.ndarray | None,
    value: int,
    box: tuple[slice, ...] | None,
    *,
    matrix: np.ndarray | None,
    axis: int,
    ndim: int,
) -> dict[str, Any]:
    """One organ's statistics (``labels``, ``grey``, ``finite`` padded to 3D).

    Fields: ``label``, ``voxels``, ``volume_ml`` (None for 2D images), ``area_px`` and
    ``area_mm2`` (2D images: pixel count and None; volumes: None), ``intensity``
    (``voxels`` used, ``mean``, ``std``, ``median``, ``p5``, ``p95``), ``bbox_voxels`` and
    ``bbox_mm`` (``{"min": [...], "max": [...]}``), ``centroid_voxels``, ``centroid_mm``,
    ``components`` and ``slices`` (``axis``, None for 2D images; ``first``, ``last``,
    ``count``, ``indices``).
    Voxel indices have ``ndim`` entries, world coordinates 3.
    """
    is_2d = matrix is None
    mask = labels[box] == value if box is not None else np.zeros((0, 0, 0), dtype=bool)
    count = int(np.count_nonzero(mask))
    voxel_mm3 = None if is_2d else abs(float(np.linalg.det(matrix[:3, :3])))
    entry: dict[str, Any] = {
        "label": value,
        "voxels": count,
        "volume_ml": None if is_2d else _round(count * voxel_mm3 / 1000.0, VOLUME_DECIMALS),
        "area_px": count if is_2d else None,
        "area_mm2": None,
    }
    shown_axis = None if is_2d else axis
    if box is None or count == 0:
        return entry | _empty_fields(shown_axis)
    offset = np.array([s.start for s in box], dtype=np.int64)
    inside = mask if finite is None else mask & finite[box]
    values = grey[box][inside].astype(np.float64)
    entry["intensity"] = _intensity(values[np.isfinite(values)])
    entry.update(_extent(mask, offset, matrix, ndim))
    entry["components"] = _components(mask)
    indices = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    indices = (indices + offset[axis]).tolist()
    entry["slices"] = _slices(shown_axis, indices)
    return entry


def _empty_fields(axis: int | None) -> dict[str, Any]:
    """The fields of an organ with no voxel: zeros, empty lists and None, never NaN."""
    return {
        "intensity": _intensity(np.zeros(0)),
        "bbox_voxels": None,
        "bbox_mm": None,
        "centroid_voxels": None,
        "centroid_mm": None,
        "components": 0,
        "slices": _slices(axis, []),
    }


def _intensity(values: np.ndarray) -> dict[str, Any]:
    """Count, mean, population std (ddof=0), median, p5 and p95 of ``values`` (float64);
    None for each statistic when ``values`` is empty."""
    if values.size == 0:
        return {"voxels": 0, "mean": None, "std": None, "median": None, "p5": None, "p95": None}
    p5, median, p95 = np.percentile(values, [5, 50, 95])
    return {
        "voxels": int(values.size),
        "mean": _round(np.mean(values)),
        "std": _round(np.std(values, ddof=0)),
        "median": _round(median),
        "p5": _round(p5),
        "p95": _round(p95),
    }


def _extent(
    mask: np.ndarray, offset: np.ndarray, matrix: np.ndarray | None, ndim: int
) -> dict[str, Any]:
    """Bounding boxes and centroids of a non-empty organ ``mask`` cropped at ``offset``."""
    where = np.nonzero(mask)
    low = np.array([int(w.min()) for w in where]) + offset
    high = np.array([int(w.max()) for w in where]) + offset
    centroid = np.array([w.mean(dtype=np.float64) for w in where]) + offset
    fields: dict[str, Any] = {
        "bbox_voxels": {"min": low[:ndim].tolist(), "max": high[:ndim].tolist()},
        "bbox_mm": None,
        "centroid_voxels": [_round(c) for c in centroid[:ndim]],
        "centroid_mm": None,
    }
    if matrix is not None:
        corners = np.array(
            [
                [hi if bit else lo for lo, hi, bit in zip(low, high, bits)]
                for bits in np.ndindex(2, 2, 2)
            ],
            dtype=np.float64,
        )
        world = _to_world(matrix, corners)
        fields["bbox_mm"] = {
            "min": [_round(v) for v in world.min(axis=0)],
            "max": [_round(v) for v in world.max(axis=0)],
        }
        fields["centroid_mm"] = [_round(v) for v in _to_world(matrix, centroid[None])[0]]
    return fields


def _to_world(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Nx3 voxel coordinates -> Nx3 world (RAS+, mm) through the 4x4 ``matrix``."""
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _components(mask: np.ndarray) -> int:
    """Connected components of ``mask`` with full connectivity (26 in 3D; a padded 2D mask
    gets 8, as its third axis has one slice)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 3)
    _, count = ndimage.label(mask, structure=structure)
    return int(count)


def _slices(axis: int | None, indices: list[int]) -> dict[str, Any]:
    """The slices along ``axis`` (None for 2D images) that hold the organ: first, last,
    count and the sorted list of indices."""
    return {
        "axis": axis,
        "first": indices[0] if indices else None,
        "last": indices[-1] if indices else None,
        "count": len(indices),
        "indices": indices,
    }


def _round(value: float, decimals: int = DECIMALS) -> float:
    """``value`` as a Python float rounded to ``decimals`` places (-0.0 becomes 0.0)."""
    return round(float(value), decimals) + 0.0
