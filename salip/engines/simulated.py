"""Simulated engines: stand-ins for SAM and CLIP driven by a case's reference labels.

They implement the engine roles (:class:`~salip.engines.encoder.Encoder`,
:class:`~salip.engines.proposer.Proposer`, :class:`~salip.engines.recogniser.Recogniser`,
:class:`~salip.engines.refiner.Refiner`) from the FULL reference label map of a case (every
label, not only the targets) with controlled, seeded noise, so strategies can be compared
on real anatomy without pretrained weights:

* the encoder's "embedding" is the slice index and the body (display pixels above 0);
* the proposer proposes the 8-connected components of every reference class plus the
  unlabelled tissue cut into chunks by a 4x4 grid, then splits, merges, drops and jitters
  them (:class:`NoiseConfig`);
* the recogniser scores each proposal by its purity (the fraction of its pixels in each
  class), adds Gaussian noise and confusions between look-alike classes
  (:data:`CONFUSABLE`, and every left/right pair), and turns the scores into
  probabilities by a softmax, as contrast scoring does;
* the refiner returns, for a box, the reference component covering most of the box, cut
  to the box grown by 10% per side, with jittered boundaries.

Every random draw comes from ``numpy.random.default_rng([seed, slice index, purpose, ...])``,
so the outputs of a slice do not depend on the order or batching in which slices are asked.

Noise presets (:data:`NOISE_PRESETS`, :func:`noise_preset`):

| field | meaning | none | low | moderate | high |
|---|---|---|---|---|---|
| `split_rate` | P(a part is cut into 2-3 pieces) | 0 | 0.1 | 0.2 | 0.4 |
| `merge_rate` | P(a part is fused with an adjacent part of another class) | 0 | 0.05 | 0.1 | 0.2 |
| `merge_keep_rate` | P(a merged part is also proposed alone) | 0.75 | 0.75 | 0.75 | 0.75 |
| `drop_rate` | P(a part is missing) | 0 | 0.05 | 0.1 | 0.2 |
| `jitter_mm` | max part boundary shift, out or in (mm) | 0 | 1 | 2 | 4 |
| `score_sigma` | std of the Gaussian noise on purity scores | 0 | 0.05 | 0.15 | 0.3 |
| `confusion_rate` | P(a look-alike class takes the organ's score), per proposal | 0 | 0.05 | 0.1 | 0.2 |
| `bias_rate` | P(an organ is biased towards one look-alike), per case | 0 | 0 | 0 | 0 |
| `bias_swap` | P(a biased organ's score is swapped), per proposal | 0.5 | 0.5 | 0.5 | 0.5 |
| `logit_scale` | softmax scale, scores -> probabilities | 10 | 10 | 10 | 10 |
| `refine_jitter_mm` | max refined-mask boundary shift (mm) | 0 | 1 | 2 | 4 |
| `iou_sigma` | std of the predicted IoU's error | 0 | 0.05 | 0.1 | 0.2 |

Proposals come in a seeded random order, so equal scores are tied at random.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError, OrganError, did_you_mean
from salip.core.label_sets import totalseg_files
from salip.core.organs import Organ, get_organ, vocabulary
from salip.core.prompts import packaged_dir
from salip.engines.boxes import grow_boxes
from salip.engines.proposals import Proposals
from salip.engines.recogniser import Recognition, accepted, pick, sides_for
from salip.io.orientation import AXES, display_pixel_mm
from salip.io.slicing import display_slice

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- noise

#: P(a merged part is also proposed alone), the same in every preset (see NoiseConfig).
MERGE_KEEP_RATE = 0.75
#: P(swap) per proposal of a biased organ, the same in every preset (see NoiseConfig).
BIAS_SWAP = 0.5

_RATES = (
    "split_rate",
    "merge_rate",
    "merge_keep_rate",
    "drop_rate",
    "confusion_rate",
    "bias_rate",
    "bias_swap",
)
_NON_NEGATIVE = ("jitter_mm", "refine_jitter_mm", "score_sigma", "iou_sigma")


@dataclass(frozen=True)
class NoiseConfig:
    """How far the simulated engines stray from the reference (all zero: not at all).

    Attributes:
        split_rate: proposer; probability that a part is cut into 2 or 3 pieces of equal
            size across a random direction.
        merge_rate: proposer; probability that a part is fused with an adjacent
            (8-connected) part of another class (unlabelled tissue counts as one class);
            the neighbour stays a proposal of its own too.
        merge_keep_rate: proposer; probability that a merged part is also proposed alone
            (SAM's grid puts several points on a part, and each point's three nested
            masks usually include the part alone).
        drop_rate: proposer; probability that a part is missing.
        jitter_mm: proposer; each part's boundary moves out (dilation) or in (erosion) by
            a distance in mm drawn uniformly from [-jitter_mm, jitter_mm] (measured with
            the slice's pixel spacing, so a pixel moves only when the draw exceeds its
            size).
        score_sigma: recogniser; standard deviation of the Gaussian noise added to every
            purity score.
        confusion_rate: recogniser; probability, per proposal and organ, that the organ's
            score is swapped with a look-alike class's (:func:`similar_classes`), so a
            spleen part looks like liver. Independent from slice to slice.
        bias_rate: recogniser; probability, per case (seed) and organ, that the recogniser
            is biased towards one look-alike class, chosen once per case and organ: then on
            every slice each proposal's organ score is swapped with that class's with
            probability ``bias_swap``. Correlated errors, as CLIP's: it confuses two
            organs systematically in a scan, not slice by slice.
        bias_swap: recogniser; the swap probability of a biased organ (see ``bias_rate``).
        logit_scale: recogniser; probabilities are ``softmax(logit_scale * scores)`` over
            the organ, every other class and the background (not noise: a temperature).
        refine_jitter_mm: refiner; boundary jitter of refined masks, as ``jitter_mm``.
        iou_sigma: refiner; standard deviation of the Gaussian error of the predicted IoU
            (see :class:`SimulatedRefiner`).
    """

    split_rate: float = 0.0
    merge_rate: float = 0.0
    drop_rate: float = 0.0
    jitter_mm: float = 0.0
    score_sigma: float = 0.0
    confusion_rate: float = 0.0
    logit_scale: float = 10.0
    refine_jitter_mm: float = 0.0
    iou_sigma: float = 0.0
    merge_keep_rate: float = MERGE_KEEP_RATE
    bias_rate: float = 0.0
    bias_swap: float = BIAS_SWAP

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"noise {name} must be a probability in [0, 1], got {value!r}.")
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < math.inf:
                raise ConfigError(f"noise {name} must be a number >= 0, got {value!r}.")
        if not _is_real(self.logit_scale) or not 0.0 < self.logit_scale < math.inf:
            raise ConfigError(f"noise logit_scale must be > 0, got {self.logit_scale!r}.")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


#: The named noise levels (see the module's table).
NOISE_PRESETS: dict[str, NoiseConfig] = {
    "none": NoiseConfig(),
    "low": NoiseConfig(
        split_rate=0.1,
        merge_rate=0.05,
        drop_rate=0.05,
        jitter_mm=1.0,
        score_sigma=0.05,
        confusion_rate=0.05,
        refine_jitter_mm=1.0,
        iou_sigma=0.05,
    ),
    "moderate": NoiseConfig(
        split_rate=0.2,
        merge_rate=0.1,
        drop_rate=0.1,
        jitter_mm=2.0,
        score_sigma=0.15,
        confusion_rate=0.1,
        refine_jitter_mm=2.0,
        iou_sigma=0.1,
    ),
    "high": NoiseConfig(
        split_rate=0.4,
        merge_rate=0.2,
        drop_rate=0.2,
        jitter_mm=4.0,
        score_sigma=0.3,
        confusion_rate=0.2,
        refine_jitter_mm=4.0,
        iou_sigma=0.2,
    ),
}


def noise_preset(name: str, **overrides: Any) -> NoiseConfig:
    """The preset called ``name`` (:data:`NOISE_PRESETS`) with fields replaced by
    ``overrides`` (e.g. ``noise_preset("low", drop_rate=0.5)``).

    Raises:
        ConfigError: an unknown preset or field name, or an invalid value.
    """
    key = str(name).strip().lower()
    if key not in NOISE_PRESETS:
        raise ConfigError(
            f"unknown noise preset '{name}'.{did_you_mean(key, NOISE_PRESETS)} "
            f"Valid presets: {', '.join(NOISE_PRESETS)}."
        )
    fields = [f.name for f in dataclasses.fields(NoiseConfig)]
    for field in overrides:
        if field not in fields:
            raise ConfigError(
                f"unknown noise setting '{field}'.{did_you_mean(field, fields)} "
                f"Valid settings: {', '.join(fields)}."
            )
    return dataclasses.replace(NOISE_PRESETS[key], **overrides)


#: Classes that look alike to a recogniser, both ways round; every left/right pair
#: (``kidney_left``/``kidney_right``) is one too (:func:`similar_classes`).
CONFUSABLE: tuple[tuple[str, str], ...] = (
    ("liver", "spleen"),
    ("aorta", "inferior_vena_cava"),
)


def similar_classes(name: str) -> tuple[str, ...]:
    """Class names that look like ``name``: its :data:`CONFUSABLE` partners and its other
    side (a ``left`` word swapped for ``right`` or back: ``kidney_left`` <-> ``kidney_right``,
    ``rib_left_7`` <-> ``rib_right_7``)."""
    out = [b for a, b in CONFUSABLE if a == name] + [a for a, b in CONFUSABLE if b == name]
    words = name.split("_")
    swap = {"left": "right", "right": "left"}
    if any(w in swap for w in words):
        out.append("_".join(swap.get(w, w) for w in words))
    return tuple(dict.fromkeys(out))


# --------------------------------------------------------------------------- anatomy


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
    if not isinstance(names, Mapping):
        raise ConfigError("label names must be a table {label value: class name}.")
    table: dict[int, str] = {}
    for key, name in names.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise ConfigError(
                f"label name table key {key!r} is not a label value; use integers."
            ) from None
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"label {value} has name {name!r}; give a non-empty class name.")
        if value > 0:
            table[value] = class_name(name.strip(), organ_map)
    return table


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


# --------------------------------------------------------------------------- proposer

# Purposes of the random streams, the third entry of every seed.
_SPLIT, _MERGE, _DROP, _JITTER, _RECOGNISE, _REFINE, _ORDER, _BIAS = range(1, 9)

#: The unlabelled tissue is cut into this many chunks per side (a 4x4 grid).
TISSUE_GRID = 4


def _rng(seed: int, index: int, purpose: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, purpose, *extra])


def _check_seed(seed: int) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"the seed must be a whole number >= 0, got {seed!r}.")
    return int(seed)


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _components(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of every class of an HxW class-id slice.

    Returns:
        (HxW int32 component ids, 0 = unlabelled; int array, entry ``c`` the class id of
        component ``c``, entry 0 is 0).
    """
    comp = np.zeros(classes.shape, dtype=np.int32)
    owners = [0]
    for k in np.unique(classes):
        if k == 0:
            continue
        lab, n = ndimage.label(classes == k, EIGHT)
        inside = lab > 0
        comp[inside] = lab[inside] + len(owners) - 1
        owners += [int(k)] * n
    return comp, np.asarray(owners, dtype=np.int64)


def _parts(classes: np.ndarray, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The noise-free parts of a slice: class components, then the unlabelled tissue
    (``body`` and class 0) cut by a :data:`TISSUE_GRID` grid into 8-connected chunks.

    Returns:
        (HxW int32 part ids, 0 = none; owner class id per part id, tissue 0, entry 0 unused).
    """
    parts, owners = _components(classes)
    tissue = body & (classes == 0)
    h, w = classes.shape
    ch, cw = math.ceil(h / TISSUE_GRID), math.ceil(w / TISSUE_GRID)
    next_id, extra = len(owners), 0
    for r in range(0, h, ch):
        for c in range(0, w, cw):
            lab, n = ndimage.label(tissue[r : r + ch, c : c + cw], EIGHT)
            if n:
                window = parts[r : r + ch, c : c + cw]
                window[lab > 0] = lab[lab > 0] + next_id + extra - 1
                extra += n
    return parts, np.concatenate([owners, np.zeros(extra, dtype=np.int64)])


def _split(
    parts: np.ndarray, owners: np.ndarray, rng: np.random.Generator, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each part, with probability ``rate``, into 2 or 3 pieces of equal size across
    a random direction (arrays as :func:`_parts`; new pieces get new ids)."""
    n = len(owners) - 1
    draws, pieces, angles = rng.random(n), rng.integers(2, 4, n), rng.uniform(0, np.pi, n)
    chosen = np.nonzero(draws < rate)[0]
    if not chosen.size:
        return parts, owners
    parts, new_owners = parts.copy(), list(owners)
    objects = ndimage.find_objects(parts)
    for i in chosen:
        window = parts[objects[i]]
        rows, cols = np.nonzero(window == i + 1)
        k = int(pieces[i])
        if rows.size < k:
            continue
        proj = cols * math.cos(angles[i]) + rows * math.sin(angles[i])
        rank = np.empty(rows.size, dtype=np.int64)
        rank[np.argsort(proj, kind="stable")] = np.arange(rows.size)
        piece = rank * k // rows.size
        window[rows, cols] = np.where(piece == 0, i + 1, len(new_owners) + piece - 1)
        new_owners += [int(owners[i + 1])] * (k - 1)
    return parts, np.asarray(new_owners, dtype=np.int64)


def _merge(
    parts: np.ndarray,
    owners: np.ndarray,
    rng: np.random.Generator,
    rate: float,
    keep_rate: float,
) -> np.ndarray:
    """NxHxW bool masks of the parts, each fused, with probability ``rate``, with one
    adjacent (8-connected) part of another class, chosen at random; a fused part is also
    kept alone, as an extra mask after the others, with probability ``keep_rate``."""
    n = len(owners) - 1
    masks = parts[None] == np.arange(1, n + 1, dtype=parts.dtype)[:, None, None]
    draws, choices, keeps = rng.random(n), rng.random(n), rng.random(n)
    chosen = np.nonzero(draws < rate)[0]
    if not chosen.size:
        return masks
    fused, alone = masks.copy(), []
    objects = ndimage.find_objects(parts)
    for i in chosen:
        if objects[i] is None:
            continue
        window = _padded(objects[i], 1, parts.shape)
        near = ndimage.binary_dilation(masks[i][window], EIGHT)
        ids = np.unique(parts[window][near])
        ids = ids[(ids > 0) & (owners[ids] != owners[i + 1])]
        if ids.size:
            fused[i] |= masks[ids[int(choices[i] * ids.size)] - 1]
            if keeps[i] < keep_rate:
                alone.append(masks[i])
    return np.concatenate([fused, np.stack(alone)]) if alone else fused


def _padded(box: tuple[slice, ...], pad: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, shape, strict=True)
    )


def _jitter(mask: np.ndarray, distance_mm: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """``mask`` (HxW bool) with its boundary moved out (distance > 0) or in (< 0) by
    ``distance_mm``, measured with the pixels' (row, column) size: a pixel is added when
    its centre lies within that distance of the mask, removed when it lies no farther from
    the background. The image edge is not a boundary."""
    if distance_mm == 0 or not mask.any():
        return mask
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    pad = math.ceil(abs(distance_mm) / min(pixel_mm)) + 1
    window = _padded(box, pad, mask.shape)
    out = np.zeros_like(mask)
    if distance_mm > 0:
        out[window] = ndimage.distance_transform_edt(~mask[window], sampling=pixel_mm) <= (
            distance_mm
        )
    else:
        out[window] = ndimage.distance_transform_edt(mask[window], sampling=pixel_mm) > (
            -distance_mm
        )
    return out


def _as_proposals(masks: np.ndarray, rng: np.random.Generator) -> Proposals:
    """Proposals of NxHxW bool masks: empty ones removed, in a random order (as SAM's,
    which follows no size or class: equal scores are then tied at random); boxes XYXY
    with the max corner inclusive, points the box centres, predicted IoU and stability 1."""
    from torchvision.ops import masks_to_boxes

    areas = masks.sum(axis=(1, 2))
    order = rng.permutation(len(masks))
    order = order[areas[order] > 0]
    kept = torch.from_numpy(np.ascontiguousarray(masks[order]))
    boxes = masks_to_boxes(kept).float() if len(kept) else torch.zeros((0, 4))
    ones = torch.ones(len(kept))
    points = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    return Proposals(kept, boxes, ones, ones.clone(), points)


class SimulatedProposer:
    """Proposer stand-in (see :class:`~salip.engines.proposer.Proposer`).

    Per slice: the 8-connected components of every reference class and the unlabelled
    tissue in chunks (:func:`_parts`), then split, merged (a merged part also proposed
    alone with probability ``merge_keep_rate``), dropped and jittered (in mm) as ``noise``
    says, in that order. Proposals come in a seeded random order, with predicted IoU and
    stability 1.

    Args:
        anatomy: the reference.
        noise: the noise (default: none).
        seed: the seed (>= 0) of every draw, with the slice index.
    """

    def __init__(
        self, anatomy: ReferenceAnatomy, noise: NoiseConfig | None = None, seed: int = 0
    ) -> None:
        self.anatomy, self.noise, self.seed = anatomy, noise or NoiseConfig(), _check_seed(seed)

    def propose(self, embeddings: Sequence[SimulatedEmbedding]) -> list[Proposals]:
        """One :class:`~salip.engines.proposals.Proposals` per embedding: NxHxW bool masks,
        Nx4 float boxes XYXY in pixels (max corner inclusive), N predicted IoU, N stability,
        Nx2 points (box centres)."""
        return [self.propose_one(emb) for emb in embeddings]

    def propose_one(self, embedding: SimulatedEmbedding) -> Proposals:
        """The proposals of one slice (see :meth:`propose`)."""
        noise, seed, index = self.noise, self.seed, embedding.index
        parts, owners = _parts(self.anatomy.class_slice(index), embedding.body)
        parts, owners = _split(parts, owners, _rng(seed, index, _SPLIT), noise.split_rate)
        masks = _merge(
            parts, owners, _rng(seed, index, _MERGE), noise.merge_rate, noise.merge_keep_rate
        )
        masks = masks[_rng(seed, index, _DROP).random(len(masks)) >= noise.drop_rate]
        if noise.jitter_mm and len(masks):
            shifts = _rng(seed, index, _JITTER).uniform(
                -noise.jitter_mm, noise.jitter_mm, len(masks)
            )
            pixel = self.anatomy.pixel_mm
            masks = np.stack([_jitter(m, d, pixel) for m, d in zip(masks, shifts, strict=True)])
        return _as_proposals(masks.reshape(-1, *parts.shape), _rng(seed, index, _ORDER))


# --------------------------------------------------------------------------- recogniser


def _class_fractions(masks: torch.Tensor, classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Nx(K+1) float64: fraction of each mask's pixels in class id 0 (unlabelled) .. K."""
    n, width = int(masks.shape[0]), n_classes + 1
    # One bincount of (mask, class id) keys over every mask pixel.
    owner, rows, cols = np.nonzero(masks.cpu().numpy())
    keys = owner * width + classes[rows, cols]
    counts = np.bincount(keys, minlength=n * width).reshape(n, width)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


class SimulatedRecogniser:
    """Recogniser stand-in (see :class:`~salip.engines.recogniser.Recogniser`).

    For an organ the classes are: the organ (its classes in the anatomy,
    :meth:`ReferenceAnatomy.own_classes`), every other class of the anatomy, and
    "background" (unlabelled pixels). A proposal's purity in a class is the fraction of
    its pixels in it; scores are purities plus Gaussian noise, with the organ's score
    swapped with a look-alike class's (:func:`similar_classes`) with probability
    ``confusion_rate``, and, when the organ is biased in this case (``bias_rate``,
    :meth:`bias_class`), with that one look-alike's with probability ``bias_swap``;
    probabilities are ``softmax(logit_scale * scores)``. A proposal is
    accepted when the organ's probability beats every other class's by more than
    ``margin``; accepted proposals are ranked by it, and
    :func:`~salip.engines.recogniser.pick` takes ``top_k`` (default: the organ's own), per
    side for a pair, on the organ's side for a one-sided organ, when ``laterality`` is on
    and the anatomy's axis is in plane (as ``ClipRecogniser``; a 2D anatomy counts as
    axial).

    ``Recognition.scores[organ]`` holds ``probability``, ``margin``, ``purity`` (of the
    organ, noise-free) and, with sides, ``side``. Draws are seeded by (seed, slice index,
    organ name).

    Args:
        anatomy: the reference (its axis decides whether sides apply).
        noise: the noise (default: none).
        seed: the seed (>= 0).
        top_k: proposals picked per organ and slice (None: the organ's ``top_k``).
        laterality: keep one-sided organs to their side and pick pairs per side.
        margin: required lead of the organ's probability (``contrast_margin``).
    """

    def __init__(
        self,
        anatomy: ReferenceAnatomy,
        noise: NoiseConfig | None = None,
        seed: int = 0,
        *,
        top_k: int | None = None,
        laterality: bool = True,
        margin: float = 0.0,
    ) -> None:
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}.")
        self.anatomy, self.noise, self.seed = anatomy, noise or NoiseConfig(), _check_seed(seed)
        self.top_k, self.laterality, self.margin = top_k, laterality, margin

    @classmethod
    def for_config(
        cls, anatomy: ReferenceAnatomy, noise: NoiseConfig | None, seed: int, config: SegmentConfig
    ) -> SimulatedRecogniser:
        """With ``config.scoring``'s ``top_k``, ``laterality`` and ``contrast_margin``."""
        s = config.scoring
        return cls(
            anatomy, noise, seed, top_k=s.top_k, laterality=s.laterality, margin=s.contrast_margin
        )

    def recognise(
        self,
        images: Sequence[np.ndarray],
        proposals: Sequence[Proposals],
        organs: Sequence[Organ],
        indices: Sequence[int] | None = None,
    ) -> list[Recognition]:
        """One :class:`~salip.engines.recogniser.Recognition` per HxWx3 uint8 display image
        and its proposals; ``indices`` are the slices' indices (required).

        Raises:
            ValueError: no ``indices``.
        """
        if indices is None:
            raise ValueError("simulated engines need the slices' indices")
        results = []
        for image, props, index in zip(images, proposals, indices, strict=True):
            found = Recognition(picked={}, scores={}, accepted={}, score={})
            fractions = _class_fractions(
                props.masks, self.anatomy.class_slice(index), len(self.anatomy.classes)
            )
            for organ in organs:
                prob, keep, info = self.assess(organ, fractions, props.boxes.cpu(), image, index)
                sides = info.get("side")
                k = self.top_k or organ.top_k
                found.picked[organ.name] = pick(organ, prob, keep, sides, k) if len(prob) else []
                found.accepted[organ.name] = accepted(organ, prob, keep, sides) if len(prob) else []
                found.scores[organ.name], found.score[organ.name] = info, prob.tolist()
            results.append(found)
        return results

    def bias_class(self, organ: Organ, look_alikes: Sequence[str]) -> str | None:
        """The look-alike class the recogniser is biased towards for ``organ`` in this
        case (drawn once per seed and organ, with probability ``bias_rate``), or None."""
        rng = np.random.default_rng([self.seed, _BIAS, zlib.crc32(organ.name.encode("utf-8"))])
        draw, choice = rng.random(2)
        if draw >= self.noise.bias_rate or not look_alikes:
            return None
        options = sorted(look_alikes)
        return options[int(choice * len(options))]

    def assess(
        self,
        organ: Organ,
        fractions: np.ndarray,
        boxes: torch.Tensor,
        image: np.ndarray,
        index: int,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(N organ probabilities, N bool accepted before sides, per-proposal score lists)
        for one slice's proposals.

        Args:
            organ: the target.
            fractions: Nx(K+1) class fractions (:func:`_class_fractions`).
            boxes: Nx4 proposal boxes, XYXY in pixels of the display image.
            image: HxWx3 uint8 display image (for the body midline).
            index: the slice index (for the seed).
        """
        classes = self.anatomy.classes
        own = set(self.anatomy.own_classes(organ.name))
        own_ids = [k + 1 for k, c in enumerate(classes) if c in own]
        other_ids = [k + 1 for k, c in enumerate(classes) if c not in own]
        purity = fractions[:, own_ids].sum(1)
        scores = np.column_stack([purity, fractions[:, other_ids], fractions[:, 0]])
        rng = _rng(self.seed, index, _RECOGNISE, zlib.crc32(organ.name.encode("utf-8")))
        n = len(scores)
        noise = rng.normal(0.0, 1.0, scores.shape) * self.noise.score_sigma
        confused, choice = rng.random(n) < self.noise.confusion_rate, rng.random(n)
        scores = scores + noise
        look_alikes = {s for c in (organ.name, *organ.parts) for s in similar_classes(c)} - own
        columns = [1 + j for j, k in enumerate(other_ids) if classes[k - 1] in look_alikes]
        if columns:
            for i in np.nonzero(confused)[0]:
                col = columns[int(choice[i] * len(columns))]
                scores[i, [0, col]] = scores[i, [col, 0]]
        biased = rng.random(n) < self.noise.bias_swap
        bias = self.bias_class(organ, [classes[other_ids[c - 1] - 1] for c in columns])
        if bias is not None:
            col = columns[[classes[other_ids[c - 1] - 1] for c in columns].index(bias)]
            for i in np.nonzero(biased & ~confused)[0]:
                scores[i, [0, col]] = scores[i, [col, 0]]
        # numpy: torch's per-call overhead dominates on matrices this small.
        logits = self.noise.logit_scale * scores
        probs = np.exp(logits - logits.max(1, keepdims=True, initial=-np.inf))
        probs /= probs.sum(1, keepdims=True)
        prob = probs[:, 0]
        margin = prob - probs[:, 1:].max(1, initial=0.0)
        info: dict[str, Any] = {
            "probability": prob.tolist(),
            "margin": margin.tolist(),
            "purity": purity.tolist(),
        }
        sides = sides_for(organ, boxes, image, laterality=self.laterality, axis=self.anatomy.axis)
        if sides is not None:
            info["side"] = sides
        return torch.from_numpy(prob).float(), torch.from_numpy(margin > self.margin), info


# --------------------------------------------------------------------------- refiner

#: The refiner keeps its mask within the box grown by this fraction of its size per side.
REFINE_GROWTH = 0.1


class SimulatedRefiner:
    """Refiner stand-in (see :class:`~salip.engines.refiner.Refiner`).

    For each box: the reference component (8-connected, of any class) covering the most
    pixels inside the box (ties: the first by component order), cut to the box grown by
    :data:`REFINE_GROWTH` of its size per side, its boundary jittered by a radius drawn
    from [-refine_jitter_mm, refine_jitter_mm] in mm (seeded by seed, slice index and box).
    A box over two organs returns the dominant one, as SAM can; a box over no labelled
    pixel returns an empty mask.

    Predicted IoU = coverage + e, clipped to [0, 1], where coverage is the component's
    share of the labelled pixels inside the box (1 for a box over one organ alone, lower
    when the box holds other organs) and e ~ N(0, ``iou_sigma``); 0 for an empty mask.
    SAM's IoU head is a regression from the image and prompt tokens: it tells an
    ambiguous box from a clean one, but it does not see its own boundary error, so the
    boundary jitter does not lower the prediction, and it errs by itself.

    Args:
        anatomy: the reference.
        noise: the noise (default: none; ``refine_jitter_mm`` and ``iou_sigma`` are used).
        seed: the seed (>= 0).
    """

    def __init__(
        self, anatomy: ReferenceAnatomy, noise: NoiseConfig | None = None, seed: int = 0
    ) -> None:
        self.anatomy, self.noise, self.seed = anatomy, noise or NoiseConfig(), _check_seed(seed)
        self._components: OrderedDict[int, np.ndarray] = OrderedDict()

    def components(self, index: int) -> np.ndarray:
        """HxW int32 component ids of slice ``index`` (0: unlabelled), cached for the last
        few slices."""
        if index not in self._components:
            self._components[index] = _components(self.anatomy.class_slice(index))[0]
            while len(self._components) > 8:
                self._components.popitem(last=False)
        self._components.move_to_end(index)
        return self._components[index]

    def refine(
        self, embedding: SimulatedEmbedding, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for Kx4 float boxes, XYXY in pixels of the slice (max corner inclusive).

        Returns:
            (KxHxW bool masks at the slice's size, K float32 predicted IoU).
        """
        h, w = embedding.original_size
        masks = torch.zeros((len(boxes), h, w), dtype=torch.bool)
        ious = torch.zeros(len(boxes))
        if len(boxes) == 0:
            return masks, ious
        comp = self.components(embedding.index)
        for k, box in enumerate(boxes.detach().cpu().double().numpy()):
            mask, iou = self._refine_box(comp, box, embedding.index)
            masks[k], ious[k] = torch.from_numpy(mask), iou
        return masks, ious

    def _refine_box(
        self, comp: np.ndarray, box: np.ndarray, index: int
    ) -> tuple[np.ndarray, float]:
        h, w = comp.shape
        x0, x1 = (int(np.clip(round(v), 0, w - 1)) for v in (box[0], box[2]))
        y0, y1 = (int(np.clip(round(v), 0, h - 1)) for v in (box[1], box[3]))
        empty = np.zeros((h, w), dtype=bool)
        if x1 < x0 or y1 < y0:
            return empty, 0.0
        counts = np.bincount(comp[y0 : y1 + 1, x0 : x1 + 1].ravel())
        if counts.size < 2 or counts[1:].max() == 0:
            return empty, 0.0
        best = int(np.argmax(counts[1:])) + 1
        coverage = counts[best] / counts[1:].sum()
        gx0, gy0, gx1, gy1 = grow_boxes(np.array([x0, y0, x1, y1], float), REFINE_GROWTH)
        inside = empty.copy()
        rows = slice(max(0, math.floor(gy0)), math.ceil(gy1) + 1)
        inside[rows, max(0, math.floor(gx0)) : math.ceil(gx1) + 1] = True
        mask = (comp == best) & inside
        rng = _rng(self.seed, index, _REFINE, x0, y0, x1, y1)
        shift = rng.uniform(-1.0, 1.0) * self.noise.refine_jitter_mm
        error = rng.normal(0.0, 1.0) * self.noise.iou_sigma
        if shift:
            mask = _jitter(comp == best, shift, self.anatomy.pixel_mm) & inside
        if not mask.any():
            return mask, 0.0
        return mask, float(np.clip(coverage + error, 0.0, 1.0))


# --------------------------------------------------------------------------- all four


def simulated_engines(
    anatomy: ReferenceAnatomy,
    noise: NoiseConfig | None = None,
    seed: int = 0,
    config: SegmentConfig | None = None,
) -> tuple[SimulatedEncoder, SimulatedProposer, SimulatedRecogniser, SimulatedRefiner]:
    """The four simulated engines on one anatomy, noise and seed: ``(encoder, proposer,
    recogniser, refiner)``, for ``salip.strategies.cascade.Engines(*engines)``.

    ``config`` (default ``SegmentConfig()``) gives the recogniser's ``top_k``,
    ``laterality`` and ``contrast_margin``; its slicing axis must be the anatomy's.

    Raises:
        ConfigError: the config's slicing axis differs from the anatomy's (volumes).
    """
    config = config or SegmentConfig()
    if not anatomy.is_2d and config.slicing.axis != anatomy.axis:
        raise ConfigError(
            f"the run slices along {config.slicing.axis} but the reference anatomy along "
            f"{anatomy.axis}; give ReferenceAnatomy(..., axis='{config.slicing.axis}')."
        )
    return (
        SimulatedEncoder(anatomy),
        SimulatedProposer(anatomy, noise, seed),
        SimulatedRecogniser.for_config(anatomy, noise, seed, config),
        SimulatedRefiner(anatomy, noise, seed),
    )
