"""The recogniser and refiner stand-ins, and :func:`simulated_engines`, all four engines."""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from salip.apps.bench.simulated.anatomy import (
    ReferenceAnatomy,
    SimulatedEmbedding,
    SimulatedEncoder,
)
from salip.apps.bench.simulated.noise import (
    STREAM_BIAS,
    STREAM_RECOGNISE,
    STREAM_REFINE,
    NoiseConfig,
    check_seed,
    similar_classes,
    stream,
)
from salip.apps.bench.simulated.proposer import SimulatedProposer, class_components, jitter_mask
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError
from salip.core.organs import Organ
from salip.engines.boxes import grow_boxes
from salip.engines.everything_mode import Proposals
from salip.engines.recogniser import Recognition, accepted, pick, sides_for

__all__ = [
    "REFINE_GROWTH",
    "simulated_engines",
    "SimulatedRecogniser",
    "SimulatedRefiner",
]

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
        self.anatomy, self.noise, self.seed = anatomy, noise or NoiseConfig(), check_seed(seed)
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
        rng = np.random.default_rng(
            [self.seed, STREAM_BIAS, zlib.crc32(organ.name.encode("utf-8"))]
        )
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
        rng = stream(self.seed, index, STREAM_RECOGNISE, zlib.crc32(organ.name.encode("utf-8")))
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

    Points steer it as they steer SAM: a negative point's component is never returned
    (the box's next most dominant one is); positive points' components are returned
    (their union, cut to the grown box when there is one) instead of the dominant one.
    Points alone return their components whole.

    Predicted IoU = coverage + e, clipped to [0, 1], where coverage is the component's
    share of the labelled pixels inside the box that no negative point excludes (1 for a
    box over one organ alone, lower when the box holds other organs; 1 for points alone)
    and e ~ N(0, ``iou_sigma``); 0 for an empty mask.
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
        self.anatomy, self.noise, self.seed = anatomy, noise or NoiseConfig(), check_seed(seed)
        self.class_components: OrderedDict[int, np.ndarray] = OrderedDict()

    def components(self, index: int) -> np.ndarray:
        """HxW int32 component ids of slice ``index`` (0: unlabelled), cached for the last
        few slices."""
        if index not in self.class_components:
            self.class_components[index] = class_components(self.anatomy.class_slice(index))[0]
            while len(self.class_components) > 8:
                self.class_components.popitem(last=False)
        self.class_components.move_to_end(index)
        return self.class_components[index]

    def refine(
        self,
        embedding: SimulatedEmbedding,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for K prompts: Kx4 float boxes, XYXY in pixels of the slice (max corner
        inclusive), and/or KxPx2 points with KxP labels (1 on the target, 0 not).

        Returns:
            (KxHxW bool masks at the slice's size, K float32 predicted IoU).
        """
        h, w = embedding.original_size
        count = len(boxes) if boxes is not None else len(points) if points is not None else 0
        masks = torch.zeros((count, h, w), dtype=torch.bool)
        ious = torch.zeros(count)
        comp = self.components(embedding.index)
        for k in range(count):
            box = None if boxes is None else boxes[k].detach().cpu().double().numpy()
            clicks = _clicks(points, point_labels, k, comp)
            mask, iou = self._refine_prompt(comp, box, clicks, embedding.index)
            masks[k], ious[k] = torch.from_numpy(mask), iou
        return masks, ious

    def _refine_prompt(
        self,
        comp: np.ndarray,
        box: np.ndarray | None,
        clicks: tuple[set[int], set[int]],
        index: int,
    ) -> tuple[np.ndarray, float]:
        h, w = comp.shape
        positive, negative = clicks
        empty = np.zeros((h, w), dtype=bool)
        inside = np.ones((h, w), dtype=bool)
        key: tuple[int, ...] = tuple(sorted(positive | negative))
        if box is None:
            chosen, coverage = positive - negative, 1.0
        else:
            x0, x1 = (int(np.clip(round(v), 0, w - 1)) for v in (box[0], box[2]))
            y0, y1 = (int(np.clip(round(v), 0, h - 1)) for v in (box[1], box[3]))
            if x1 < x0 or y1 < y0:
                return empty, 0.0
            key = (x0, y0, x1, y1)
            counts = np.bincount(comp[y0 : y1 + 1, x0 : x1 + 1].ravel(), minlength=2)
            counts[[0, *negative]] = 0
            chosen = positive - negative
            if not chosen and counts.max() > 0:
                chosen = {int(np.argmax(counts))}
            if counts.sum() == 0 or not chosen:
                return empty, 0.0
            coverage = sum(int(counts[c]) for c in chosen if c < counts.size) / counts.sum()
            gx0, gy0, gx1, gy1 = grow_boxes(np.array([x0, y0, x1, y1], float), REFINE_GROWTH)
            inside = empty.copy()
            rows = slice(max(0, math.floor(gy0)), math.ceil(gy1) + 1)
            inside[rows, max(0, math.floor(gx0)) : math.ceil(gx1) + 1] = True
        if not chosen:
            return empty, 0.0
        whole = np.isin(comp, sorted(chosen))
        mask = whole & inside
        rng = stream(self.seed, index, STREAM_REFINE, *key)
        shift = rng.uniform(-1.0, 1.0) * self.noise.refine_jitter_mm
        error = rng.normal(0.0, 1.0) * self.noise.iou_sigma
        if shift:
            mask = jitter_mask(whole, shift, self.anatomy.pixel_mm) & inside
        if not mask.any():
            return mask, 0.0
        return mask, float(np.clip(coverage + error, 0.0, 1.0))


def _clicks(
    points: torch.Tensor | None, labels: torch.Tensor | None, k: int, comp: np.ndarray
) -> tuple[set[int], set[int]]:
    """(component ids under prompt ``k``'s positive points, under its negative points);
    points on unlabelled pixels (id 0) name no component."""
    if points is None:
        return set(), set()
    h, w = comp.shape
    positive, negative = set(), set()
    for j, (x, y) in enumerate(points[k].detach().cpu().double().numpy()):
        row, col = int(np.clip(round(y), 0, h - 1)), int(np.clip(round(x), 0, w - 1))
        label = 1 if labels is None else int(labels[k, j])
        if comp[row, col]:
            (positive if label == 1 else negative).add(int(comp[row, col]))
    return positive, negative


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
