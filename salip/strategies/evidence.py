"""Deciding each organ from its evidence in 3D: which pieces of its mask to keep, how sure
salip is of the result, and "not found" instead of a mask it cannot stand behind.

A strategy leaves a canonical bool mask per organ and, per organ, what the recogniser said
on every slice it looked at (:class:`~salip.strategies.base.SliceEvidence`). Then:

1. **Pieces.** The mask's 3D pieces (full connectivity) are grouped across short gaps
   along the slicing axis: pieces whose columns are at most ``max_gap`` empty slices apart
   are one piece, and the gap voxels between them (where both sides hold the organ) are
   filled in.
2. **Evidence.** Each accepted region's score goes to the piece it lies on (the piece with
   the most voxels inside its box on its slice). A piece is kept when it has at least
   :data:`PIECE_SHARE` of the best piece's evidence; at least the organ's ``top_k`` pieces
   with evidence are kept (both kidneys of a pair). So a two-slice slab picked by mistake
   loses to an organ whose pieces gaps had cut, and an organ in two parts stays whole.
3. **Confidence.** A number in [0, 1] from the kept pieces' evidence (:func:`confidence`):
   how strongly the recogniser recognised them, how much of the organ's evidence they
   hold, and how far they extend along the axis.
4. **Not found.** Below ``min_confidence`` the organ is answered "not found", with the
   reason, and its mask is emptied.

Without evidence (an injected segmenter, a learned head) and for 2D images, the mask is
kept as the strategy gave it (volumes: its ``top_k`` largest pieces), with no confidence,
and nothing is withheld.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from salip.core.organs import Organ
from salip.io.slicing import AXES, display_slice
from salip.strategies.base import SliceEvidence

__all__ = [
    "CONFIDENCE_WEIGHTS",
    "PIECE_SHARE",
    "confidence",
    "confidence_inputs",
    "decide_organ",
    "OrganDecision",
    "record_box",
    "record_score",
]

#: A piece is kept when its evidence is at least this share of the best piece's.
PIECE_SHARE = 0.5

#: Logistic model of confidence: weights of :func:`confidence_inputs`, fitted by
#: ``benchmarks/calibrate_confidence.py`` on the simulated benchmark's development case
#: (example_ct_sm, 600 organ answers) and frozen; see :func:`confidence`.
CONFIDENCE_WEIGHTS: tuple[float, ...] = (-12.675, 5.940, 4.869, 3.802)


@dataclass
class OrganDecision:
    """One organ's answer.

    Attributes:
        mask: canonical bool mask after the cleanup (XxYxZ, HxW for a 2D image); all False
            when the organ is not found.
        confidence: in [0, 1], the estimated probability that the answer is right (see
            :func:`confidence`); None when the strategy gave no evidence.
        found: whether a mask is given.
        reason: why the organ is not found (None when found).
        account: JSON-ready: the pieces, their evidence and which were kept, and the
            confidence's inputs.
    """

    mask: np.ndarray
    confidence: float | None
    found: bool
    reason: str | None = None
    account: dict[str, Any] = field(default_factory=dict)


def decide_organ(
    mask: np.ndarray,
    organ: Organ,
    evidence: Sequence[SliceEvidence] | None,
    *,
    axis: str,
    is_2d: bool,
    max_gap: int,
    min_confidence: float,
    cleanup: bool = True,
    slice_mm: float = 1.0,
) -> OrganDecision:
    """Decide one organ from its mask and evidence (see the module docstring).

    Args:
        mask: canonical bool mask from the strategy (XxYxZ, or HxW for a 2D image).
        organ: the organ (its ``top_k`` pieces at least are kept).
        evidence: what the recogniser said on the slices it looked at, or None (no
            recogniser: the mask is cleaned by voxel count as before, no confidence, never
            withheld). A 2D image gets no confidence either, and nothing is withheld:
            the model is calibrated on volumes, and a 2D image has no extent to weigh.
        axis: the slicing axis ("axial", "coronal", "sagittal").
        is_2d: whether ``mask`` is a 2D image's.
        max_gap: pieces this many empty slices apart along the axis, or fewer, are one.
        min_confidence: below this the organ is "not found".
        cleanup: keep only the supported pieces (False: keep every piece, as
            ``--no-largest-component``).
        slice_mm: distance between slices along the axis, in mm (1 for a 2D image).
    """
    mask = np.asarray(mask, dtype=bool)
    if evidence is None or is_2d:
        # A 2D image has no extent along an axis, and the model is calibrated on volumes.
        if cleanup and not is_2d:
            mask = _largest(mask, organ.top_k)
        found = bool(mask.any())
        return OrganDecision(mask, None, found, None if found else "the mask is empty")
    if not mask.any():
        reason = "no region was recognised as the organ"
        if _any_score(evidence):
            reason = "the recognised regions gave no mask"
        return OrganDecision(mask, 0.0, False, reason, {"pieces": []})
    filled = _bridge(mask, AXES[axis], max_gap)
    labels, count = ndimage.label(filled, np.ones((3, 3, 3), bool))
    scores = _piece_scores(labels, count, evidence, axis)
    voxels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    keep = _kept_pieces(scores, voxels, organ.top_k) if cleanup else list(range(count))
    out = np.isin(labels, [k + 1 for k in keep]) if cleanup else mask
    features = _features(labels, keep, evidence, axis, slice_mm)
    value = confidence(features)
    account = {
        "pieces": [
            {"voxels": int(voxels[k]), "evidence": round(float(scores[k]), 4), "kept": k in keep}
            for k in range(count)
        ],
        **{name: round(float(v), 4) for name, v in features.items()},
        "confidence": round(value, 4),
    }
    if value < min_confidence:
        reason = f"confidence {value:.2f} is below the minimum {min_confidence:g}"
        return OrganDecision(np.zeros_like(mask), value, False, reason, account)
    return OrganDecision(out, value, True, None, account)


def confidence_inputs(features: Mapping[str, float]) -> list[float]:
    """The regressors of the confidence model: ``(1, score, share, log(1 + span_mm /
    10))`` from an account's features (see :func:`confidence`)."""
    return [1.0, features["score"], features["share"], math.log1p(features["span_mm"] / 10)]


def confidence(features: Mapping[str, float]) -> float:
    """The estimated probability that an organ's answer is right (Dice >= 0.5), from its
    kept pieces' evidence.

    A logistic model, ``1 / (1 + exp(-w . x))`` with ``x`` the
    :func:`confidence_inputs` and ``w`` :data:`CONFIDENCE_WEIGHTS`, of:

    * ``score``: the mean recognition score over the evidence on the kept pieces, in
      [0, 1] (how strongly the recogniser said so);
    * ``share``: the kept pieces' share of all the organ's evidence, in [0, 1] (how
      little of it pointed elsewhere);
    * ``span_mm``: the kept pieces' length along the axis, in mm (an organ extends; a
      stray pick does not).

    ``support`` (the share of the slices looked at along the pieces that recognised them)
    and ``slices`` (how many did) are in the account but not in the model: with the
    others, support took a negative weight (collinear), and a slice count depends on how
    many slices a strategy looks at.
    """
    z = float(np.dot(CONFIDENCE_WEIGHTS, confidence_inputs(features)))
    return 1.0 / (1.0 + math.exp(-z))


def record_score(record: dict[str, Any]) -> float:
    """The evidence score of a used proposal's record: its contrast probability."""
    return float(record["probability"])


def record_box(record: dict[str, Any]) -> tuple[float, float, float, float]:
    """XYXY of a record's ``bbox`` (XYWH in pixels of the display slice)."""
    x, y, w, h = (float(v) for v in record["bbox"])
    return (x, y, x + w, y + h)


def _any_score(evidence: Sequence[SliceEvidence]) -> bool:
    return any(e.score > 0 for e in evidence)


def _largest(mask: np.ndarray, n: int) -> np.ndarray:
    from salip.strategies.assembly import keep_largest_components

    return keep_largest_components(mask, n)


def _bridge(mask: np.ndarray, axis: int, max_gap: int) -> np.ndarray:
    """``mask`` with runs of at most ``max_gap`` empty voxels along ``axis`` filled where
    both ends of the run hold the mask (a closing by a line along the axis, OR-ed with the
    mask so the volume's end slices are not eroded)."""
    if max_gap < 1:
        return mask
    shape = [1, 1, 1]
    shape[axis] = max_gap + 1
    return mask | ndimage.binary_closing(mask, np.ones(shape, dtype=bool))


def _piece_scores(
    labels: np.ndarray,
    count: int,
    evidence: Sequence[SliceEvidence],
    axis: str,
) -> np.ndarray:
    """Per piece (0-based), the summed scores of the accepted regions lying on it."""
    scores = np.zeros(count)
    for item in evidence:
        piece = _piece_of(labels, item, axis)
        if piece is not None:
            scores[piece] += item.score
    return scores


def _piece_of(labels: np.ndarray, item: SliceEvidence, axis: str) -> int | None:
    """The 0-based piece with the most voxels inside ``item``'s box on its slice."""
    if item.box is None or item.score <= 0:
        return None
    if not 0 <= item.slice < labels.shape[AXES[axis]]:
        return None
    plane = display_slice(labels, False, axis, item.slice)
    h, w = plane.shape[:2]
    x0, y0, x1, y1 = item.box
    rows = slice(max(0, math.floor(y0)), min(h, math.ceil(y1) + 1))
    cols = slice(max(0, math.floor(x0)), min(w, math.ceil(x1) + 1))
    counts = np.bincount(np.asarray(plane[rows, cols]).ravel())
    if counts.size < 2 or counts[1:].max() == 0:
        return None
    return int(np.argmax(counts[1:]))


def _kept_pieces(scores: np.ndarray, voxels: np.ndarray, top_k: int) -> list[int]:
    """Pieces with at least :data:`PIECE_SHARE` of the best one's evidence, and at least
    the ``top_k`` best; ordered by evidence, then voxels. Without any evidence, the
    ``top_k`` largest."""
    order = sorted(range(len(scores)), key=lambda k: (-scores[k], -voxels[k], k))
    best = scores[order[0]] if order else 0.0
    if best <= 0:
        return order[:top_k]
    return [
        k
        for j, k in enumerate(order)
        if scores[k] > 0 and (j < top_k or scores[k] >= PIECE_SHARE * best)
    ]


def _features(
    labels: np.ndarray,
    keep: list[int],
    evidence: Sequence[SliceEvidence],
    axis: str,
    slice_mm: float,
) -> dict[str, float]:
    """The inputs of :func:`confidence` for the kept pieces, and ``slices``: how many
    slices recognised them."""
    kept = {k + 1 for k in keep}
    on = [e for e in evidence if (p := _piece_of(labels, e, axis)) is not None and p + 1 in kept]
    total = float(sum(e.score for e in evidence if e.score > 0))
    inside = np.isin(labels, list(kept))
    other = tuple(i for i in range(3) if i != AXES[axis])
    span = set(np.nonzero(inside.any(axis=other))[0].tolist())
    looked = {e.slice for e in evidence if e.slice in span}
    supported = {e.slice for e in on}
    return {
        "score": float(np.mean([e.score for e in on])) if on else 0.0,
        "support": len(supported) / len(looked) if looked else 0.0,
        "share": float(sum(e.score for e in on)) / total if total else 0.0,
        "slices": float(len(supported)),
        "span_mm": (max(span) - min(span) + 1) * slice_mm,
    }
