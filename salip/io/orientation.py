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
    src_axis, _ = source_slice_indices(volume, axis, [0])
    p, q = (n for n in range(3) if n != src_axis)
    shape = volume.geometry.shape + (1,) * (3 - len(volume.geometry.shape))
    _check_inside(xy, (shape[p], shape[q]), slice_index, shape[src_axis])
    ornt, canonical_shape = volume.geometry.ornt, volume.data.shape
    out = np.zeros_like(xy)
    a, b = in_plane_axes(axis)
    for k in range(len(xy)):
        canon = [0.0, 0.0, 0.0]
        for n, value in ((src_axis, slice_index), (p, xy[k, 0]), (q, xy[k, 1])):
            c = int(ornt[n, 0])
            canon[c] = canonical_shape[c] - 1 - value if ornt[n, 1] < 0 else value
        # to_display reverses both in-plane axes and puts b along the rows.
        out[k] = (canonical_shape[a] - 1 - canon[a], canonical_shape[b] - 1 - canon[b])
    _, (index,) = source_slice_indices(volume, axis, [slice_index])  # its own inverse
    return index, out


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
    src_axis, (slice_index,) = source_slice_indices(volume, axis, [index])
    p, q = (n for n in range(3) if n != src_axis)
    ornt, canonical_shape = volume.geometry.ornt, volume.data.shape
    a, b = in_plane_axes(axis)
    out = np.zeros((len(xy), 3))
    for k, (col, row) in enumerate(xy):
        canon = {AXES[axis]: float(index)}
        canon[a], canon[b] = canonical_shape[a] - 1 - col, canonical_shape[b] - 1 - row
        file = {}
        for n in (p, q):
            c = int(ornt[n, 0])
            file[n] = canonical_shape[c] - 1 - canon[c] if ornt[n, 1] < 0 else canon[c]
        out[k] = (slice_index, file[p], file[q])
    return out
