"""An organ's track through the key slices of the ``volume`` strategy: the candidate
regions the recogniser accepted on each key slice, the chain of them the track takes, and
claims settled between organs whose tracks take the same region.

Boxes are XYXY in pixels of the display slices (max corner inclusive); slices are indices
along the slicing axis of the canonical volume.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from salip.core.organs import Organ
from salip.engines.everything_mode import Proposals
from salip.engines.recogniser import Recognition
from salip.strategies.cascade import region_box, region_members
from salip.strategies.tracks import best_chain
from salip.strategies.volume_view import VolumeView

__all__ = [
    "CLAIM_IOU",
    "competing",
    "HYPOTHESES",
    "group_regions",
    "link_tracks",
    "organ_regions",
    "Pick",
    "same_region",
    "Track",
]

#: Candidate regions per organ (side) and key slice that its track may take: the best
#: region the recogniser accepted and the next ones apart from it.
HYPOTHESES = 3
#: Two organs' picks on one key slice whose boxes overlap this much (IoU) are one region.
CLAIM_IOU = 0.5


@dataclass
class Pick:
    """One organ's region on one key slice: grouped accepted proposals.

    ``box`` is XYXY in pixels of the display image (max inclusive); ``score`` the best
    proposal's ranking score; ``parts`` how many proposals were grouped.
    """

    slice: int
    box: list[float]
    score: float
    parts: int


@dataclass
class Track:
    """One organ (one side of a pair) through the volume, and its report.

    ``candidates``: key slice -> the regions the recogniser accepted there, best first;
    ``picks``: key slice -> the one the track takes (:func:`link_tracks`); ``hinted``:
    seeded by the user's hints, not by recognition.
    """

    organ: Organ
    side: str | None
    candidates: dict[int, list[Pick]] = field(default_factory=dict)
    picks: dict[int, Pick] = field(default_factory=dict)
    masks: dict[int, tuple[np.ndarray, float, str]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    hinted: bool = False


def group_regions(
    props: Proposals, members: Sequence[int], score: Sequence[float], limit: int
) -> list[Pick]:
    """Up to ``limit`` disjoint regions of the accepted ``members`` (best first, all on
    one side), best first: the best remaining proposal grouped with every one that
    overlaps or touches it, directly or through others
    (:func:`~salip.strategies.cascade.region_members`), then the same among the rest."""
    left, out = list(members), []
    while left and len(out) < limit:
        grouped = region_members(props, left[0], left[1:], {})
        box = region_box(props, grouped).tolist()
        out.append(Pick(-1, box, float(score[left[0]]), len(grouped)))
        taken = set(grouped)
        left = [i for i in left if i not in taken]
    return out


def organ_regions(
    organ: Organ, props: Proposals, found: Recognition, limit: int = 1
) -> Iterator[tuple[str | None, list[Pick]]]:
    """(side, up to ``limit`` candidate regions, best first) of ``organ`` on one slice:
    one entry per side for a pair with sides known, else one (none when nothing is
    accepted)."""
    members = found.accepted.get(organ.name, [])
    if not members:
        return
    sides = found.scores.get(organ.name, {}).get("side")
    score = found.score[organ.name]
    if organ.laterality == "none" and organ.parts and sides is not None:
        for side in ("left", "right"):
            on_side = [i for i in members if sides[i] == side]
            if on_side:
                yield side, group_regions(props, on_side, score, limit)
        return
    yield None, group_regions(props, members, score, limit)


def link_tracks(
    tracks: Sequence[Track], keys: Sequence[int], view: VolumeView, max_mm: float, max_gap: int
) -> None:
    """Choose each track's picks among its candidates, then settle claims between organs.

    A track takes the chain of candidates with the most summed score
    (:func:`~salip.strategies.tracks.best_chain`: consecutive picks at most ``max_mm``
    apart in plane per key slice between them, or one's centre inside the other's box,
    and at most ``max_gap`` key slices without a pick between). Where two organs' tracks
    take the same region on a key slice (boxes with IoU of at least :data:`CLAIM_IOU`),
    one yields it and its chain is chosen again without it: the one that would still take
    another region on that slice if only one would, else the one whose track holds less
    evidence (ties: the organ asked for later). An organ and its own part
    (a pair and one side's organ) do not compete. A recogniser that consistently calls
    the liver "spleen" gives the spleen the liver's region on many slices, and only the
    liver's own track shows whose it is. The yielded regions are reported under
    ``yielded``.
    """
    chain = functools.partial(_chain, keys=keys, pixel_mm=view.pixel_spacing, max_mm=max_mm,
                              max_gap=max_gap)  # fmt: skip
    for track in tracks:
        track.picks = chain(track.candidates)
    # Each round removes one candidate, so this ends.
    while (claim := _first_claim(tracks)) is not None:
        a, b, key = claim
        fewer = {id(t): _without(t, key) for t in (a, b)}
        rechained = {id(t): chain(fewer[id(t)]) for t in (a, b)}
        # Would each still take another region on that slice without this one?
        other = {id(t): key in rechained[id(t)] for t in (a, b)}
        if other[id(a)] != other[id(b)]:
            loser, winner = (a, b) if other[id(a)] else (b, a)
        else:
            loser, winner = (b, a) if _evidence(a.picks) >= _evidence(b.picks) else (a, b)
        loser.candidates, loser.picks = fewer[id(loser)], rechained[id(loser)]
        name = winner.organ.name + (f" ({winner.side})" if winner.side else "")
        loser.report.setdefault("yielded", []).append({"slice": view.source_index(key), "to": name})


def _chain(
    candidates: dict[int, list[Pick]],
    *,
    keys: Sequence[int],
    pixel_mm: Sequence[float],
    max_mm: float,
    max_gap: int,
) -> dict[int, Pick]:
    """Key slice -> pick of the best chain through ``candidates`` (:func:`best_chain`)."""
    boxes = {k: [(p.box, p.score) for p in ps] for k, ps in candidates.items()}
    chosen = best_chain(boxes, keys, pixel_mm, max_mm, max_gap)
    return {k: candidates[k][h] for k, h in chosen.items()}


def _without(track: Track, key: int) -> dict[int, list[Pick]]:
    """The track's candidates without its pick on ``key``."""
    out = dict(track.candidates)
    out[key] = [p for p in out[key] if p is not track.picks[key]]
    return out


def _evidence(picks: dict[int, Pick]) -> float:
    return sum(p.score for p in picks.values())


def competing(a: Organ, b: Organ) -> bool:
    """Whether two organs compete for a region: not one organ, nor an organ and its own
    part (a pair and one side's organ)."""
    return not (a.name in (b.name, *b.parts) or b.name in a.parts)


def same_region(boxes: Sequence[Sequence[float]], box: Sequence[float]) -> list[bool]:
    """Which XYXY ``boxes`` are the region of ``box`` on the same slice: box IoU of at
    least :data:`CLAIM_IOU`."""
    if not boxes:
        return []
    ious = box_iou(
        torch.tensor(boxes, dtype=torch.float32), torch.tensor([box], dtype=torch.float32)
    )
    return (ious[:, 0] >= CLAIM_IOU).tolist()


def _first_claim(tracks: Sequence[Track]) -> tuple[Track, Track, int] | None:
    """(first track, second track, key slice) of the first two tracks of different
    organs whose picks on one key slice are the same region; None if none."""
    for i, a in enumerate(tracks):
        for b in tracks[i + 1 :]:
            if not competing(a.organ, b.organ):
                continue
            for key in sorted(set(a.picks) & set(b.picks)):
                if same_region([a.picks[key].box], b.picks[key].box)[0]:
                    return a, b, key
    return None
