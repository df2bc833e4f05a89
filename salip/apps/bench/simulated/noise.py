"""The simulated engines' noise (its fields and presets), the look-alike classes, and the
seeded random streams."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from salip.core.errors import ConfigError, did_you_mean

__all__ = [
    "BIAS_SWAP",
    "CONFUSABLE",
    "MERGE_KEEP_RATE",
    "NOISE_PRESETS",
    "check_seed",
    "noise_preset",
    "NoiseConfig",
    "similar_classes",
    "stream",
]

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


# Purposes of the random streams, the third entry of every seed.
(
    STREAM_SPLIT,
    STREAM_MERGE,
    STREAM_DROP,
    STREAM_JITTER,
    STREAM_RECOGNISE,
    STREAM_REFINE,
    STREAM_ORDER,
    STREAM_BIAS,
) = range(1, 9)


def stream(seed: int, index: int, purpose: int, *extra: int) -> np.random.Generator:
    """The random stream of one draw: seeded by (seed, slice index, purpose, ...), so a
    slice's draws do not depend on the order or batching in which slices are asked."""
    return np.random.default_rng([seed, index, purpose, *extra])


def check_seed(seed: int) -> int:
    """``seed`` as an int; ConfigError unless it is a whole number >= 0."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"the seed must be a whole number >= 0, got {seed!r}.")
    return int(seed)
