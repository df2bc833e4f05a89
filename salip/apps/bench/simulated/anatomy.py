"""The reference anatomy the simulated engines read (a case's full label map and its
classes), and the encoder stand-in that shows it slice by slice."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from salip.core.errors import ConfigError, OrganError, did_you_mean
from salip.core.label_sets import parse_label_names, totalseg_files
from salip.core.organs import get_organ, vocabulary
from salip.core.prompts import packaged_dir
from salip.io.orientation import AXES, display_pixel_mm
from salip.io.slicing import display_slice

__all__ = [
    "EIGHT",
    "class_name",
    "ReferenceAnatomy",
    "SimulatedEmbedding",
    "SimulatedEncoder",
    "totalseg_organ_map",
]

logger = logging.getLogger(__name__)


@functools.cache
def totalseg_organ_map() -> dict[str, str]:
    """TotalSegmentator classes that are parts of one built-in organ (the lung lobes), for
    ``ReferenceAnatomy(..., organ_map=totalseg_organ_map())``; read on first use."""
    organs = vocabulary(packaged_dir()).organs
    return {
        cls: organ
        for organ, classes in totalseg_files().items()
        if len(classes) > 1 and not organs[organ].parts
        for cls in classes
    }


#: 8-connectivity in a slice.
EIGHT = np.ones((3, 3), dtype=bool)


def class_name(name: str, organ_map: Mapping[str, str] | None = None) -> str:
    """The class name salip uses for a reference label called ``name``: ``organ_map``'s
    entry, else the vocabulary's canonical name (synonyms too), else ``name`` as given."""
    if organ_map and name in organ_map:
        return organ_map[name]
    try:
        return get_organ(name).name
    except OrganError:
        return name


class ReferenceAnatomy:
    """A case's full reference label map, sliced like the images salip feeds engines.

    Args:
        label_map: non-negative integer labels (0: unlabelled) in salip's canonical layout:
            XxYxZ RAS+ for a volume (``salip.io.to_canonical`` of a reference stored like
            the input), HxW for a 2D image. Integral floats and bools are accepted.
        names: label value -> class name (int or numeric-string keys, as in a JSON table);
            names become vocabulary names where they are (:func:`class_name`); labels
            present without a name are called ``label_<value>``; value 0 is ignored.
        axis: slicing axis, "axial", "coronal" or "sagittal" (ignored for 2D).
        is_2d: whether ``label_map`` is a 2D image's (default: it has 2 dimensions).
        organ_map: class name -> the name to use instead (several labels may become one
            class, e.g. :func:`totalseg_organ_map` joins lung lobes into lungs).
        spacing: voxel size in mm along the axes of ``label_map`` (canonical XYZ; HxW
            for a 2D image); default 1 mm. Boundary jitter is in mm.

    Attributes:
        label_map, axis, is_2d: as given (``label_map`` as an integer array).
        names: label value -> class name, after mapping.
        classes: the class names present in ``label_map``, by first label value; class id
            ``k`` (1-based) is ``classes[k - 1]``, 0 is unlabelled.
        count: number of slices along ``axis`` (1 for 2D).
        slice_shape: (H, W) of a display slice.
        pixel_mm: (row, column) size in mm of a display slice's pixels.

    Raises:
        ConfigError: a label map that is not 2D/3D, has negative or non-integral values;
            an invalid name table or axis.
    """

    def __init__(
        self,
        label_map: np.ndarray,
        names: Mapping[Any, str],
        *,
        axis: str = "axial",
        is_2d: bool | None = None,
        organ_map: Mapping[str, str] | None = None,
        spacing: Sequence[float] | None = None,
    ) -> None:
        array = np.asarray(label_map)
        self.is_2d = array.ndim == 2 if is_2d is None else bool(is_2d)
        if array.ndim != (2 if self.is_2d else 3):
            raise ConfigError(
                f"the reference label map has shape {array.shape}; give an HxW map for a 2D "
                "image or an XxYxZ map (salip.io.to_canonical of the reference) for a volume."
            )
        if axis not in AXES:
            raise ConfigError(
                f"unknown axis '{axis}'.{did_you_mean(axis, AXES)} Use one of {', '.join(AXES)}."
            )
        self.axis = axis
        self.label_map = _integer_labels(array)
        counts = _value_counts(self.label_map)
        present = [int(v) for v in np.nonzero(counts)[0] if v > 0]
        self.names = _name_table(names, organ_map)
        for value in present:
            self.names.setdefault(value, f"label_{value}")
        self.classes: tuple[str, ...] = tuple(dict.fromkeys(self.names[v] for v in present))
        self._lut = np.zeros(len(counts), dtype=np.int32)  # label value -> class id
        for value in present:
            self._lut[value] = self.classes.index(self.names[value]) + 1
        self.count = 1 if self.is_2d else int(self.label_map.shape[AXES[axis]])
        self.slice_shape = tuple(int(n) for n in self.labels(0).shape[:2])
        self.pixel_mm = _pixel_mm(spacing, array.ndim, self.is_2d, axis)
        logger.debug("reference anatomy: %d classes, %d slices", len(self.classes), self.count)

    def labels(self, index: int) -> np.ndarray:
        """HxW label values of slice ``index`` in display orientation, pixel for pixel with
        the display image salip makes of that slice (``display_slice``)."""
        if not 0 <= index < self.count:
            raise IndexError(f"slice {index} out of range 0..{self.count - 1}")
        return display_slice(self.label_map, self.is_2d, self.axis, index)

    def class_slice(self, index: int) -> np.ndarray:
        """HxW int32 class ids (0: unlabelled, k: ``classes[k - 1]``) of slice ``index``,
        in display orientation."""
        return self._lut[self.labels(index)]

    def own_classes(self, name: str) -> tuple[str, ...]:
        """The classes of this anatomy whose union is ``name``: the class itself, or the
        organ and its parts (``kidneys`` = ``kidney_left`` + ``kidney_right``); empty when
        absent.

        Raises:
            ConfigError: ``name`` is neither a class here nor a vocabulary organ.
        """
        if name in self.classes:
            return (name,)
        try:
            organ = get_organ(name)
        except OrganError:
            hint = did_you_mean(name, self.classes, n=3)
            raise ConfigError(
                f"'{name}' is neither a class of the reference nor a known organ.{hint} "
                "Use a vocabulary organ name or one of the reference's classes."
            ) from None
        return tuple(c for c in (organ.name, *organ.parts) if c in self.classes)

    def class_mask(self, label_slice: np.ndarray, name: str) -> np.ndarray:
        """HxW bool: pixels of ``label_slice`` (label values, as :meth:`labels` gives)
        in class or organ ``name`` (a pair organ is the union of its parts)."""
        own = set(self.own_classes(name))
        values = [v for v, n in self.names.items() if n in own]
        return np.isin(label_slice, values)


def _pixel_mm(
    spacing: Sequence[float] | None, ndim: int, is_2d: bool, axis: str
) -> tuple[float, float]:
    """(row, column) mm of a display slice's pixels, from the label map's voxel size: a
    display slice is the canonical slice (in-plane axes a < b) transposed, so rows run
    along b (as :class:`~salip.strategies.volume_view.VolumeView`)."""
    if spacing is None:
        return (1.0, 1.0)
    sizes = [float(v) for v in spacing][:ndim]
    if len(sizes) != ndim or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise ConfigError(
            f"the reference's spacing must be {ndim} sizes in mm > 0, got {list(spacing)!r}."
        )
    if is_2d:
        return (sizes[0], sizes[1])
    return display_pixel_mm(sizes, axis)


def _integer_labels(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ConfigError(f"the reference label map has dtype {array.dtype}; give integer labels.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ConfigError("the reference label map has non-integral values; give labels.")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ConfigError("the reference label map has negative values; labels must be >= 0.")
    if not np.can_cast(array.dtype, np.intp):
        array = array.astype(np.int64)
    return array


def _value_counts(labels: np.ndarray) -> np.ndarray:
    """Voxels per label value (index = value), counted slab by slab to bound memory."""
    top = int(labels.max()) if labels.size else 0
    counts = np.zeros(top + 1, dtype=np.int64)
    for start in range(0, max(1, labels.shape[0]), 16):
        counts += np.bincount(labels[start : start + 16].ravel(), minlength=top + 1)
    return counts


def _name_table(names: Mapping[Any, str], organ_map: Mapping[str, str] | None) -> dict[int, str]:
    """Label value -> class (:func:`~salip.core.label_sets.parse_label_names`, each name
    mapped to the vocabulary through ``organ_map``)."""
    try:
        table = parse_label_names(names)
    except ValueError as exc:
        raise ConfigError(f"{exc}.") from None
    return {value: class_name(name, organ_map) for value, name in table.items()}


# --------------------------------------------------------------------------- encoder


@dataclass
class SimulatedEmbedding:
    """What :class:`SimulatedEncoder` makes of a slice.

    Attributes:
        index: the slice's index along the axis (0 for 2D).
        original_size: the display image's (H, W).
        body: HxW bool, the tissue shown (display image channel 0 above 0).
    """

    index: int
    original_size: tuple[int, int]
    body: np.ndarray


class SimulatedEncoder:
    """Encoder stand-in (see :class:`~salip.engines.encoder.Encoder`): no model, the
    "embedding" is the slice index and its body."""

    def __init__(self, anatomy: ReferenceAnatomy) -> None:
        self.anatomy = anatomy

    def prepare(self, images: Sequence[np.ndarray]) -> None:
        """Nothing to prepare."""
        return None

    def encode(
        self,
        images: Sequence[np.ndarray],
        prepared: Any | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[SimulatedEmbedding]:
        """One :class:`SimulatedEmbedding` per HxWx3 uint8 display image.

        Raises:
            ValueError: no ``indices`` (the caller must say which slices these are).
            ConfigError: an image whose size differs from the reference's slices.
        """
        if indices is None:
            raise ValueError("simulated engines need the slices' indices")
        out = []
        for image, index in zip(images, indices, strict=True):
            size = (int(image.shape[0]), int(image.shape[1]))
            if size != self.anatomy.slice_shape:
                raise ConfigError(
                    f"slice {index} is {size[0]}x{size[1]} but the reference's slices are "
                    f"{self.anatomy.slice_shape[0]}x{self.anatomy.slice_shape[1]}; give the "
                    "reference of this image in canonical layout (salip.io.to_canonical) and "
                    "the same slicing axis."
                )
            grey = image[..., 0] if image.ndim == 3 else image
            out.append(SimulatedEmbedding(int(index), size, np.asarray(grey) > 0))
        return out
