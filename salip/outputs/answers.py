"""Each organ's answer in a run: its mask decided from the recognition evidence
(:func:`~salip.strategies.evidence.decide_organ`), how sure salip is of it, and "not found"
instead of a mask it cannot stand behind; and the fields that carry the answer into the
outputs (the report, the statistics, the viewer, the sidecar and run.csv)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from salip.core.config import SegmentConfig
from salip.core.organs import Organ
from salip.strategies.base import SliceEvidence
from salip.strategies.evidence import OrganDecision, decide_organ

__all__ = [
    "CONFIDENCE_DECIMALS",
    "answer",
    "decide_organs",
    "report_answer",
    "rounded_confidence",
]

logger = logging.getLogger(__name__)

#: Decimal places of a confidence in the outputs.
CONFIDENCE_DECIMALS = 4


def decide_organs(
    masks: Mapping[str, np.ndarray],
    evidence: Mapping[str, Sequence[SliceEvidence]] | None,
    organs: Sequence[Organ],
    config: SegmentConfig,
    *,
    is_2d: bool,
    where: str,
    slice_mm: float = 1.0,
) -> dict[str, OrganDecision]:
    """Decide every organ from its canonical mask and evidence with the assembly settings
    (``largest_component``, ``max_gap_slices``, ``min_confidence``), logging one INFO line
    per organ not found.

    Args:
        masks: organ name -> canonical bool mask from the strategy.
        evidence: the strategy's evidence (:attr:`StrategyResult.evidence`); None, or an
            organ missing from it: no confidence, nothing withheld.
        organs: the organs, in label order.
        config: the run's settings.
        is_2d: whether the input is a 2D image.
        where: the input's name, for the log.
        slice_mm: distance between slices along the slicing axis, in mm.
    """
    settings = config.assembly
    decisions = {}
    for organ in organs:
        decision = decide_organ(
            masks[organ.name],
            organ,
            None if evidence is None else evidence.get(organ.name),
            axis=config.slicing.axis,
            is_2d=is_2d,
            max_gap=settings.max_gap_slices,
            min_confidence=settings.min_confidence,
            cleanup=settings.largest_component,
            slice_mm=slice_mm,
        )
        if not decision.found:
            logger.info("%s: %s not found: %s", where, organ.name, decision.reason)
        decisions[organ.name] = decision
    return decisions


def rounded_confidence(decision: OrganDecision) -> float | None:
    """The decision's confidence to :data:`CONFIDENCE_DECIMALS` places, None without one."""
    if decision.confidence is None:
        return None
    return round(float(decision.confidence), CONFIDENCE_DECIMALS)


def answer(decision: OrganDecision) -> dict[str, Any]:
    """``confidence`` (rounded; None when the strategy gave no evidence), ``found`` and
    ``reason`` (why not found; None when found): JSON-ready, for the statistics and the
    viewer."""
    return {
        "confidence": rounded_confidence(decision),
        "found": bool(decision.found),
        "reason": decision.reason,
    }


def report_answer(decision: OrganDecision) -> dict[str, Any]:
    """:func:`answer` and the decision's account (``decision``: the pieces, their evidence
    and which were kept, the confidence's inputs; None when there was no evidence)."""
    return {**answer(decision), "decision": decision.account or None}
