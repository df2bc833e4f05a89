"""Canonical orientation and its inverse: volumes are reoriented to RAS+ on the way in
(:func:`_canonical`, :func:`to_canonical`) and masks go back to the input's grid
(:func:`to_source_grid`); :func:`source_slice_indices` maps canonical slice indices to the
input file's."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.errors import InputError
from salip.io.volume import SourceGeometry, Volume

__all__ = [
    "AXES",
    "display_pixel_mm",
    "display_to_input",
    "input_to_display",
    "in_plane_axes",
    "slice_counts",
    "slices_with_most",
    "source_slice_indices",
    "to_canonical",
    "to_source_grid",
]

#: Canonical array axis sliced for each slicing axis name.
AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


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

    The inverse of :func:`to_source_grid`: an array of ``geometry.shape`` (e.g. a reference
    mask stored like the input file) becomes XxYxZ in canonical RAS+ order; 2D images (HxW)
    come back unchanged.
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


def to_source_grid(canonical: np.ndarray, geometry: SourceGeometry) -> np.ndarray:
    """Undo the canonical reorientation: a canonical XxYxZ array -> the input's shape."""
    if geometry.kind == "image":
        return canonical
    from nibabel import orientations as nio

    back = nio.ornt_transform(nio.axcodes2ornt("RAS"), geometry.ornt)
    source = nio.apply_orientation(canonical, back)
    return source.reshape(geometry.shape)


def display_pixel_mm(spacing: Sequence[float], axis: str) -> tuple[float, float]:
    """(row, column) size in mm of the pixels of a display slice along ``axis``.

    ``spacing`` is the voxel size along the canonical axes (X, Y, Z). A display slice is
    the canonical slice (in-plane axes a < b) transposed, so its rows run along b.
    """
    a, b = in_plane_axes(axis)
    return (float(spacing[b]), float(spacing[a]))


def in_plane_axes(axis: str) -> tuple[int, int]:
    """The two canonical axes (a < b) that span a slice along ``axis``."""
    a, b = (k for k in range(3) if k != AXES[axis])
    return a, b


def slice_counts(mask: np.ndarray, axis: str) -> np.ndarray:
    """The number of nonzero voxels of each slice along ``axis`` of a canonical XxYxZ array
    (int64, one entry per slice)."""
    return np.count_nonzero(mask, axis=in_plane_axes(axis)).astype(np.int64)


def slices_with_most(labels: np.ndarray, axis: str, k: int) -> list[int]:
    """The (up to) ``k`` slices along ``axis`` of a canonical XxYxZ array with the most
    nonzero voxels, in ascending order; among equal counts the lower index wins."""
    counts = slice_counts(labels, axis)
    return sorted(np.argsort(-counts, kind="stable")[:k].tolist())


def source_slice_indices(
    volume: Volume, axis: str, canonical: Iterable[int]
) -> tuple[int, list[int]]:
    """Map canonical slice indices along ``axis`` to (input axis, input indices).

    The input axis is the file array axis that ``axis`` slices run along; indices count
    along it in the file (0 and the given indices for 2D images).
    """
    if volume.is_2d:
        return 0, list(canonical)
    ornt = volume.geometry.ornt
    target = AXES[axis]
    src_axis = int(np.nonzero(ornt[:, 0] == target)[0][0])
    n = volume.data.shape[target]
    flipped = ornt[src_axis, 1] < 0
    return src_axis, [n - 1 - k if flipped else k for k in canonical]


def input_to_display(
    volume: Volume, axis: str, slice_index: int, xy: np.ndarray
) -> tuple[int, np.ndarray]:
    """Points given in voxel indices of the input grid -> the display slice they lie on.

    The convention of :mod:`salip.core.hints`: ``slice_index`` counts along the input
    file's axis that ``axis`` runs along; ``x`` and ``y`` along the file's two other axes,
    ``x`` along the lower-numbered one. A 2D image's ``x``, ``y`` are column and row.

    Args:
        volume: the input, read by :func:`salip.io.read_input`.
        axis: the slicing axis ("axial", "coronal", "sagittal").
        slice_index: the slice, as indexed in the input file.
        xy: Nx2 float (x, y) voxel indices on that slice.

    Returns:
        (the slice's index along ``axis`` in the canonical volume, Nx2 float (x, y) in
        pixels of its display image: column, row).

    Raises:
        InputError: the slice or a point outside the input's grid.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if volume.is_2d:
        h, w = volume.data.shape[:2]
        _check_inside(xy, (w, h), slice_index, 1)
        return 0, xy
    src_axis, (index,) = source_slice_indices(volume, axis, [slice_index])  # own inverse
    p, q = (n for n in range(3) if n != src_axis)
    shape = volume.geometry.shape + (1,) * (3 - len(volume.geometry.shape))
    _check_inside(xy, (shape[p], shape[q]), slice_index, shape[src_axis])
    voxels = np.zeros((len(xy), 4))
    voxels[:, src_axis], voxels[:, p], voxels[:, q], voxels[:, 3] = slice_index, *xy.T, 1.0
    canonical = voxels @ np.linalg.inv(_canonical_to_file(volume)).T
    return index, _display_xy(canonical, volume.data.shape, axis)


def _check_inside(xy: np.ndarray, size: tuple[int, int], slice_index: int, count: int) -> None:
    """Raise InputError unless ``slice_index`` < ``count`` and 0 <= x < size[0],
    0 <= y < size[1]."""
    if not 0 <= slice_index < count:
        raise InputError(
            f"hint slice {slice_index} is outside the input, which has {count} slices "
            "along the slicing axis (0-based)."
        )
    for x, y in xy:
        if not (0 <= x <= size[0] - 1 and 0 <= y <= size[1] - 1):
            raise InputError(
                f"hint point ({x:g}, {y:g}) is outside the slice, whose voxel indices run "
                f"0..{size[0] - 1} (x) and 0..{size[1] - 1} (y)."
            )


def display_to_input(volume: Volume, axis: str, index: int, xy: np.ndarray) -> np.ndarray:
    """The inverse of :func:`input_to_display`: Nx2 (x, y) display pixels of canonical
    slice ``index`` -> Nx3 (slice, x, y) voxel indices of the input grid (x along the
    lower-numbered in-plane file axis); a 2D image's come back as (0, x, y)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if volume.is_2d:
        return np.column_stack([np.zeros(len(xy)), xy])
    src_axis, _ = source_slice_indices(volume, axis, [index])
    p, q = (n for n in range(3) if n != src_axis)
    a, b = in_plane_axes(axis)
    shape = volume.data.shape
    canonical = np.zeros((len(xy), 4))
    canonical[:, AXES[axis]], canonical[:, 3] = index, 1.0
    # _display_xy undone: to_display reverses both in-plane axes and puts b along the rows.
    canonical[:, a], canonical[:, b] = shape[a] - 1 - xy[:, 0], shape[b] - 1 - xy[:, 1]
    voxels = canonical @ _canonical_to_file(volume).T
    return voxels[:, [src_axis, p, q]]


def _canonical_to_file(volume: Volume) -> np.ndarray:
    """4x4 map from canonical voxel indices to the input file's (nibabel's
    ``inv_ornt_aff`` of the reorientation :func:`_canonical` applied)."""
    from nibabel import orientations as nio

    shape = volume.geometry.shape + (1,) * (3 - len(volume.geometry.shape))
    to_ras = nio.ornt_transform(volume.geometry.ornt, nio.axcodes2ornt("RAS"))
    return nio.inv_ornt_aff(to_ras, shape)


def _display_xy(canonical: np.ndarray, shape: tuple[int, ...], axis: str) -> np.ndarray:
    """Nx2 (column, row) display pixels of Nx3+ canonical voxel indices on slices along
    ``axis``: :func:`salip.io.slicing.to_display` reverses both in-plane axes and puts the
    later one along the rows."""
    a, b = in_plane_axes(axis)
    return np.column_stack([shape[a] - 1 - canonical[:, a], shape[b] - 1 - canonical[:, b]])
