"""How salip's inputs and masks sit in napari: layer arrays, their affine, and hints read
from napari's shapes and points. No Qt here, so it is tested without a display.

A layer holds the input grid as stored (``to_source_grid`` of salip's canonical data),
only transposed so that napari's slider runs along the slicing axis: its axes are (the file
axis the axial slices run along, the higher in-plane file axis, the lower one), so a layer's
data coordinates ``(slice, y, x)`` are exactly the voxel indices a hint takes
(:mod:`salip.core.hints`). The layer's affine maps them to the world in mm, with world axes
(superior, posterior, left): napari draws the second axis downwards and the third to the
right, so an axial slice appears as radiologists read it (anterior up, the patient's right
on the left), whatever the file's orientation. Masks salip writes share the input's grid,
so they take the same transpose and affine and overlay exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from salip.core.hints import Hint
from salip.io import Volume
from salip.io.orientation import source_slice_indices, to_source_grid
from salip.outputs.preview import COLOURS

__all__ = [
    "from_layer",
    "hints_from_layers",
    "label_colormap",
    "label_colours",
    "layer_affine",
    "layer_order",
    "to_layer",
    "WORLD_FROM_RAS",
]

#: RAS+ (x, y, z) mm -> napari world (superior, posterior, left) mm, homogeneous.
WORLD_FROM_RAS = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def layer_order(volume: Volume) -> tuple[int, ...]:
    """The file axes in the layer's order: (axial slice axis, higher in-plane axis, lower
    in-plane axis); () for a 2D image (its layer is the image as stored)."""
    if volume.is_2d:
        return ()
    s, _ = source_slice_indices(volume, "axial", [0])
    p, q = (n for n in range(3) if n != s)
    return (s, q, p)


def to_layer(array: np.ndarray, volume: Volume) -> np.ndarray:
    """An array in the input's grid (a mask salip wrote, ``result.labels``) -> the layer
    layout of :func:`layer_order`; a 2D image's comes back as it is."""
    order = layer_order(volume)
    if not order:
        return array
    shaped = array.reshape(tuple(volume.geometry.shape) + (1,) * (3 - array.ndim))
    return np.transpose(shaped, order)


def from_layer(array: np.ndarray, volume: Volume) -> np.ndarray:
    """The inverse of :func:`to_layer`: a layer array -> the input's grid."""
    order = layer_order(volume)
    if not order:
        return array
    back = np.transpose(array, np.argsort(order))
    return back.reshape(volume.geometry.shape)


def layer_image(volume: Volume) -> np.ndarray:
    """The input's intensities in the layer layout (float32; HU for CT)."""
    if volume.is_2d:
        data = volume.data
        return data[..., 0] if data.ndim == 3 and data.shape[2] == 1 else data
    return to_layer(to_source_grid(volume.data, volume.geometry), volume)


def layer_affine(volume: Volume) -> np.ndarray:
    """4x4 (3x3 for a 2D image: identity) layer data -> napari world (mm) affine."""
    order = layer_order(volume)
    if not order:
        return np.eye(3)
    permute = np.zeros((4, 4))
    for layer_axis, file_axis in enumerate(order):
        permute[file_axis, layer_axis] = 1.0
    permute[3, 3] = 1.0
    return WORLD_FROM_RAS @ np.asarray(volume.geometry.affine, float) @ permute


def hints_from_layers(
    target: str, rectangles: Sequence[np.ndarray], points: Sequence[tuple[np.ndarray, bool]]
) -> list[Hint]:
    """Hints for ``target`` from napari data coordinates of layers on the image's grid.

    Args:
        target: the target's name.
        rectangles: each a Kx3 (slice, y, x) array of a rectangle's corners (a Shapes
            layer's data), or Kx2 (y, x) for a 2D image.
        points: ``(point, positive)``: a 3 (slice, y, x) or 2 (y, x) coordinate and its
            sign.

    Returns:
        One hint per rectangle and per point (:func:`salip.core.hints.read_hints` merges
        those on one slice); coordinates rounded to voxel indices.
    """
    hints = []
    for corners in rectangles:
        corners = np.asarray(corners, float)
        index = int(round(corners[0, 0])) if corners.shape[1] == 3 else 0
        ys, xs = corners[:, -2], corners[:, -1]
        box = (xs.min(), ys.min(), xs.max(), ys.max())
        hints.append(Hint(target, index, tuple(float(round(v)) for v in box)))  # type: ignore[arg-type]
    for point, positive in points:
        point = np.asarray(point, float)
        index = int(round(point[0])) if point.size == 3 else 0
        y, x = float(round(point[-2])), float(round(point[-1]))
        hints.append(Hint(target, index, None, ((x, y, bool(positive)),)))
    return hints


def layer_kwargs(volume: Volume) -> dict[str, Any]:
    """napari layer keywords that put a layer on the input's grid: ``affine`` (volumes)
    and ``metadata`` (the input's path)."""
    kwargs: dict[str, Any] = {"metadata": {"salip_source": str(volume.path)}}
    if not volume.is_2d:
        kwargs["affine"] = layer_affine(volume)
    return kwargs


def label_colours(label_values: Mapping[str, int]) -> dict[int, tuple[float, ...]]:
    """Label value -> RGBA in [0, 1], salip's preview and viewer colours (0: clear)."""
    colours: dict[int, tuple[float, ...]] = {0: (0.0, 0.0, 0.0, 0.0)}
    for value in label_values.values():
        r, g, b = COLOURS[(value - 1) % len(COLOURS)] / 255.0
        colours[value] = (float(r), float(g), float(b), 1.0)
    return colours


def label_colormap(label_values: Mapping[str, int]) -> Any:
    """napari's colormap of :func:`label_colours` (unlisted values clear)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), **label_colours(label_values)})
