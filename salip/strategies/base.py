"""What strategies share: the :class:`Strategy` protocol and its result, and the
:class:`SliceSegmenter` protocol a ``slices`` strategy drives one batch at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from salip.core.organs import Organ

if TYPE_CHECKING:
    from salip.strategies.volume_view import VolumeView

__all__ = [
    "SliceEvidence",
    "SliceOutput",
    "SliceSegmenter",
    "Strategy",
    "StrategyResult",
    "WorkCounts",
]


@dataclass
class SliceOutput:
    """What a slice segmenter returns for one slice.

    Attributes:
        masks: organ name -> HxW bool mask in the slice's display orientation.
        chosen: organ name -> records of the proposals used (for the report): ``bbox``
            (XYWH pixels of the slice), ``clip_score`` (cosine with the organ),
            ``probability`` and ``margin`` (contrast scoring), ``side`` (patient side, with
            laterality), ``area`` (pixels), ``refine_iou``.
    """

    masks: dict[str, np.ndarray]
    chosen: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class SliceSegmenter(Protocol):
    """Anything that turns a batch of HxWx3 uint8 RGB slices into per-organ masks.

    :func:`salip.segment` accepts one through its ``segmenter`` argument and runs it under
    the ``slices`` strategy (:class:`~salip.strategies.slices.SlicesStrategy`). It is called
    with the batch's display images, the organs, and the slices' indices along the slicing
    axis of the canonical volume (0 for a 2D image), in slice order. Returning plain
    ``{organ: mask}`` dicts is also accepted. An optional ``slice_batch`` attribute (int)
    sets how many slices a call gets when the ``encoder_batch_size`` setting is 0 (auto);
    otherwise 4. An optional ``prepare(images)`` method is run in a background thread one
    batch ahead, and its result passed to the call as ``prepared=``. An optional
    ``intensity_organs`` attribute (organs) replaces the organs asked for when choosing the
    intensity window (a learned head keeps its training window).
    """

    def __call__(
        self, images: Sequence[np.ndarray], organs: Sequence[Organ], indices: Sequence[int]
    ) -> Sequence[SliceOutput | dict[str, np.ndarray]]: ...


@dataclass
class WorkCounts:
    """The work a strategy asked of its engines (the report's ``strategy.counts``).

    Attributes:
        encoded_slices: slices through the encoder.
        proposal_slices: slices through everything mode (the proposer).
        point_prompts: point prompts decoded by the proposer (grid points per slice).
        box_prompts: box prompts decoded by the refiner.
    """

    encoded_slices: int = 0
    proposal_slices: int = 0
    point_prompts: int = 0
    box_prompts: int = 0


@dataclass(frozen=True)
class SliceEvidence:
    """What the recogniser said about one organ on one slice it looked at.

    Attributes:
        slice: index along the slicing axis of the canonical volume (0 for a 2D image).
        score: the organ's probability for the region accepted there (contrast scoring's
            softmax, or the paper scoring's ranking score), in [0, 1]; 0.0 where the organ
            was looked for and nothing was accepted.
        box: XYXY in pixels of the display slice (max corner inclusive) of the accepted
            region; None where nothing was accepted.
    """

    slice: int
    score: float
    box: tuple[float, float, float, float] | None = None


@dataclass
class StrategyResult:
    """What a strategy returns.

    Attributes:
        masks: organ name -> bool mask in salip's canonical layout (XxYxZ RAS+; HxW for a
            2D image), before component cleanup.
        chosen: organ name -> records of the proposals used, each with ``slice`` (index
            along the slicing axis of the canonical volume) and the fields of
            :attr:`SliceOutput.chosen`.
        details: JSON-ready account of the run for the report's ``strategy`` section
            (counts of work done; for the volume strategy, per-organ tracks), with slice
            indices as in the input file.
        evidence: organ name -> one :class:`SliceEvidence` per slice the recogniser looked
            at (several on a slice with several accepted regions), or None when the
            strategy has no recogniser to ask (an injected segmenter, a learned head): then
            no confidence can be given and nothing is withheld. An organ's entry is None
            when its scores are no probabilities (the paper's scoring), for the same reason.
    """

    masks: dict[str, np.ndarray]
    chosen: dict[str, list[dict[str, Any]]]
    details: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, list[SliceEvidence] | None] | None = None


class Strategy(Protocol):
    """Drives a volume through engines: asks for slices (and their embeddings) by index and
    decides where each organ is.

    Attributes:
        name: the strategy's name in reports ("slices", ...).
        intensity_organs: organs whose window maps the volume to 8 bits instead of the
            organs asked for, or None (a learned head keeps its training window).
    """

    name: str
    intensity_organs: Sequence[Organ] | None

    def run(
        self, view: VolumeView, organs: Sequence[Organ], *, progress: bool = False
    ) -> StrategyResult:
        """Segment ``organs`` in ``view``; ``progress`` shows a progress bar."""
        ...
