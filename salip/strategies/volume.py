"""The ``volume`` strategy: find each organ in 3D from a few key slices, then propagate.

1. **Survey.** Key slices are body slices at a fixed physical stride along the axis
   (``key_stride_mm``, at least ``min_key_slices``); only they go through everything mode
   and recognition, once for all organs.
2. **Localise.** Per organ (per side for a left/right pair), each key slice gives up to
   :data:`HYPOTHESES` candidate regions: accepted proposals that overlap or touch one
   another form one region, whose box is the prompt. The organ's track takes the chain of
   candidates with the most summed score whose consecutive picks lie at most
   ``track_distance_mm`` apart in plane, with at most ``max_key_gap`` key slices without
   a pick between (:func:`link_tracks`); where two organs' tracks take the same region,
   the one with less evidence yields it and takes its next best chain. The extent is the
   chain's first to last key slice.
3. **Seed.** The picks inside the extent are refined into masks.
4. **Propagate.** From each seed, walk slice by slice both ways: the last good mask's
   box, grown by ``propagation_margin``, is the next slice's box prompt. A slice is bad
   when its mask vanishes, the refiner's predicted IoU falls below ``min_refine_iou``, or
   the recogniser rejects the mask, which it is asked when the area changes by more than
   ``max_area_ratio`` (areas counted from the area filter's speck floor,
   ``min_area_mm2``) and on every key slice. A bad slice does not end the walk: once a slice is
   good again, the bad ones between are prompted with boxes interpolated from their good
   neighbours. A walk stops after ``max_walk_failures`` bad slices in a row, when it
   leaves the extent by more than ``extent_tolerance_mm``, or when it reaches another
   seed. Where walks overlap, the mask with the higher predicted IoU wins.

**Hints.** A target with hints (:mod:`salip.strategies.hints`) is not localised by
recognition: each hint's slice is prompted with the hint (box and/or points), the mask is
its seed, and the walk goes both ways from it with the stop rules above, except that the
recogniser is not asked (the user said what the region is): an area jump is a bad slice,
and there is no extent to leave. Its region is walked first; another organ's candidate
on a key slice that is the same region (box IoU of at least
:data:`~salip.strategies.key_tracks.CLAIM_IOU` with the hinted mask's box) is withdrawn
and reported under ``yielded``, so the other organs still compete for the slices around
it. A hinted target gets no confidence: the model is calibrated on recognition alone.

Only key slices and the slices walked are encoded (through a bounded cache), and only key
slices run everything mode.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from salip.core.config import SegmentConfig
from salip.core.organs import Organ
from salip.core.timing import StageTimer
from salip.engines.area_filter import area_filter, speck_pixels
from salip.engines.boxes import grow_boxes, mask_box, prompt_boxes
from salip.engines.everything_mode import Proposals
from salip.io.slicing import display_slice
from salip.strategies.assembly import empty_volume_mask, put_slice
from salip.strategies.base import SliceEvidence, StrategyResult, WorkCounts
from salip.strategies.cascade import Engines, point_prompts, prompt_regions
from salip.strategies.embedding_cache import DEFAULT_CAPACITY, EmbeddingCache
from salip.strategies.hints import (
    SliceHint,
    hint_record,
    hinted_organs,
    refine_hint,
    seeded_report,
)
from salip.strategies.key_tracks import (
    HYPOTHESES,
    Track,
    competing,
    link_tracks,
    organ_regions,
    same_region,
)
from salip.strategies.tracks import distance_from_track, gap_boxes
from salip.strategies.volume_view import VolumeView

__all__ = [
    "key_slices",
    "VolumeStrategy",
]


def key_slices(body: Sequence[int], spacing_mm: float, stride_mm: float, minimum: int) -> list[int]:
    """Body slices ``stride_mm`` apart along the axis, starting at the first body slice.

    Args:
        body: indices of the slices with body, ascending.
        spacing_mm: distance between neighbouring slices.
        stride_mm: distance between key slices.
        minimum: when the stride gives fewer, that many body slices evenly spread (or all).
    """
    if not body:
        return []
    step = max(1, round(stride_mm / spacing_mm))
    present = set(body)
    keys = [i for i in range(body[0], body[-1] + 1, step) if i in present]
    if len(keys) < minimum:
        spread = np.linspace(0, len(body) - 1, min(minimum, len(body))).round().astype(int)
        keys = sorted({body[k] for k in spread})
    return keys


class VolumeStrategy:
    """The ``volume`` strategy on engines (see the module docstring).

    Args:
        engines: encoder, proposer, recogniser, refiner.
        config: all settings (``config.strategy`` holds this strategy's).
        batch_size: slices per encoder call and per survey step.
        timer: stage timer to add to.
    """

    name = "volume"
    intensity_organs = None

    def __init__(
        self,
        engines: Engines,
        config: SegmentConfig,
        batch_size: int,
        timer: StageTimer,
        hints: Sequence[SliceHint] = (),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.engines, self.config, self.batch_size, self.timer = engines, config, batch_size, timer
        self.hints = tuple(hints)

    def run(
        self, view: VolumeView, organs: Sequence[Organ], *, progress: bool = False
    ) -> StrategyResult:
        cfg = self.config.strategy
        counts = WorkCounts()
        cache = EmbeddingCache(
            view, self.engines.encoder, max(4 * self.batch_size, DEFAULT_CAPACITY)
        )
        keys = key_slices(
            view.body_indices(), view.slice_spacing, cfg.key_stride_mm, cfg.min_key_slices
        )
        evidence: dict[str, list[SliceEvidence]] = {o.name: [] for o in organs}
        tracks = self._survey(view, cache, keys, organs, counts, evidence)
        walk = _Walker(self, view, cache, keys, counts)
        hinted = [o for o in organs if o.name in hinted_organs(self.hints)]
        hint_tracks = [self._hint_track(walk, organ) for organ in hinted]
        tracks = [t for t in tracks if t.organ.name not in {o.name for o in hinted}]
        for track in hint_tracks:
            _withdraw(track, tracks, view)
        link_tracks(tracks, keys, view, cfg.track_distance_mm, cfg.max_key_gap)
        result = StrategyResult(
            masks={o.name: empty_volume_mask(view.mask_shape) for o in organs},
            chosen={o.name: [] for o in organs},
            evidence={**evidence, **{o.name: None for o in hinted}},  # type: ignore[dict-item]
        )
        for track in tracks:
            extent = self._localise(track, keys, view)
            if extent is not None:
                walk.seed_and_propagate(track, extent)
        tracks = _in_order(tracks + hint_tracks, organs)
        for track in tracks:
            self._place(track, view, result)
        counts.encoded_slices = cache.encoded
        result.details = {
            "counts": dataclasses.asdict(counts),
            "key_slices": [view.source_index(k) for k in keys],
            "organs": _organ_reports(tracks),
        }
        if hint_tracks:
            result.details["hints"] = [h for t in hint_tracks for h in t.report["hints"]]
        return result

    def _hint_track(self, walk: _Walker, organ: Organ) -> Track:
        """The track of a hinted organ: seeded at its hints, walked both ways."""
        track = Track(organ, None, hinted=True)
        walk.seed_hints(track, [h for h in self.hints if h.organ == organ.name])
        slices = sorted(track.masks)
        ends = (slices[0], slices[-1]) if slices else ()
        extent = sorted(walk.view.source_index(k) for k in ends) or None
        track.report.update(side=None, hinted=True, extent=extent)
        for hint in track.report["hints"]:
            hint["seeded"]["extent"] = extent
        return track

    def _survey(
        self,
        view: VolumeView,
        cache: EmbeddingCache,
        keys: list[int],
        organs: Sequence[Organ],
        counts: WorkCounts,
        evidence: dict[str, list[SliceEvidence]],
    ) -> list[Track]:
        """Everything mode and recognition on the key slices; one track per organ (side).
        Adds what the recogniser said on each key slice to ``evidence``; an organ scored
        without probabilities (the paper's scoring) gets None there: the confidence model
        is calibrated on contrast probabilities."""
        tracks: dict[tuple[str, str | None], Track] = {}
        uncalibrated: set[str] = set()
        proposals_config = self.config.proposals
        for start in range(0, len(keys), self.batch_size):
            batch = keys[start : start + self.batch_size]
            images = [view.image(i) for i in batch]
            t = time.perf_counter()
            embeddings = cache.get(batch, images)
            t = self.timer.add("sam_encoder", t)
            regions = prompt_regions(view, batch, proposals_config)
            proposals = [
                area_filter(p, self.config.area, view.pixel_mm)
                for p in self.engines.proposer.propose(embeddings, regions)
            ]
            self.timer.add("proposals", t)
            counts.proposal_slices += len(batch)
            counts.point_prompts += point_prompts(proposals_config, regions, view.display_shape)
            found = self.engines.recogniser.recognise(images, proposals, organs, batch)
            for index, props, recognition in zip(batch, proposals, found, strict=True):
                for organ in organs:
                    said = evidence[organ.name]
                    if "probability" not in recognition.scores.get(organ.name, {"probability": 0}):
                        uncalibrated.add(organ.name)
                    for side, picks in organ_regions(organ, props, recognition, HYPOTHESES):
                        for pick in picks:
                            pick.slice = index
                        track = tracks.setdefault((organ.name, side), Track(organ, side))
                        track.candidates[index] = picks
                        said.append(SliceEvidence(index, picks[0].score, tuple(picks[0].box)))
                    if not said or said[-1].slice != index:
                        said.append(SliceEvidence(index, 0.0))
        for name in uncalibrated:
            evidence[name] = None  # type: ignore[assignment]
        for organ in organs:  # an organ found nowhere still gets its (empty) report
            if not any(name == organ.name for name, _ in tracks):
                tracks[(organ.name, None)] = Track(organ, None)
        return _in_order(list(tracks.values()), organs)

    def _localise(self, track: Track, keys: list[int], view: VolumeView) -> tuple[int, int] | None:
        """The extent (first, last key slice) of the track's chain of picks; None when the
        organ was not found. A key slice whose best candidate the chain did not take is
        reported as rejected, with that candidate's distance from the chain."""
        chain = {k: pick.box for k, pick in track.picks.items()}
        rejected = []
        for k, candidates in sorted(track.candidates.items()):
            if not candidates or track.picks.get(k) is candidates[0]:
                continue
            record: dict[str, Any] = {"slice": view.source_index(k)}
            distance = distance_from_track(chain, k, candidates[0].box, view.pixel_spacing)
            if distance is not None:
                record["distance_mm"] = round(distance, 1)
            rejected.append(record)
        profile = [track.picks[k].score if k in track.picks else 0.0 for k in keys]
        extent = (min(track.picks), max(track.picks)) if track.picks else None
        track.report.update(
            side=track.side,
            profile=[[view.source_index(k), round(s, 4)] for k, s in zip(keys, profile)],
            rejected=rejected,
            extent=sorted(view.source_index(k) for k in extent) if extent else None,
        )
        return extent

    def _place(self, track: Track, view: VolumeView, result: StrategyResult) -> None:
        """Put the track's slice masks into the organ's canonical mask and its seeds into
        ``chosen``."""
        target = result.masks[track.organ.name]
        for index, (mask, _iou, _source) in sorted(track.masks.items()):
            if view.is_2d:
                target |= mask
            else:
                put_slice(target, index, view.axis, mask | _display_of(target, index, view))
        for seed in track.report.get("seeds", []):
            result.chosen[track.organ.name].append(dict(seed["record"], slice=seed["canonical"]))


def _in_order(tracks: Sequence[Track], organs: Sequence[Organ]) -> list[Track]:
    """``tracks`` in the order the organs were asked, a pair's sides left before right."""
    order = {o.name: i for i, o in enumerate(organs)}
    return sorted(tracks, key=lambda t: (order[t.organ.name], t.side or ""))


def _withdraw(hinted: Track, tracks: Sequence[Track], view: VolumeView) -> None:
    """Withdraw from other organs' ``tracks`` each key-slice candidate that is the hinted
    track's region there (box IoU >= CLAIM_IOU with its mask's box), reported under
    ``yielded``. An organ and its own part do not compete."""
    name = hinted.organ.name
    for track in tracks:
        if not competing(track.organ, hinted.organ):
            continue
        for key, picks in track.candidates.items():
            if key not in hinted.masks:
                continue
            same = same_region([p.box for p in picks], mask_box(hinted.masks[key][0]))
            if any(same):
                track.candidates[key] = [p for p, s in zip(picks, same) if not s]
                record = {"slice": view.source_index(key), "to": f"{name} (hint)"}
                track.report.setdefault("yielded", []).append(record)


def _display_of(target: np.ndarray, index: int, view: VolumeView) -> np.ndarray:
    """The current display-orientation slice of a canonical mask (pairs share one mask)."""
    return np.asarray(display_slice(target, False, view.axis, index), dtype=bool)


def _organ_reports(tracks: Sequence[Track]) -> dict[str, list[dict[str, Any]]]:
    """Organ name -> its tracks' reports (without the chosen records, reported apart)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for track in tracks:
        report = dict(track.report)
        report["seeds"] = [{"slice": s["slice"], **s["record"]} for s in report.get("seeds", [])]
        out.setdefault(track.organ.name, []).append(report)
    return out


class _Walker:
    """Seeds and propagation of one run: refines boxes, walks slices, records stops."""

    def __init__(
        self,
        strategy: VolumeStrategy,
        view: VolumeView,
        cache: EmbeddingCache,
        keys: list[int],
        counts: WorkCounts,
    ) -> None:
        self.engines, self.config, self.timer = strategy.engines, strategy.config, strategy.timer
        self.batch_size = strategy.batch_size
        self.view, self.cache, self.keys, self.counts = view, cache, set(keys), counts
        self.ahead = 1  # slices to encode at the next fetch of a walk

    def refine(
        self,
        index: int,
        box: Sequence[float] | None,
        limits: tuple[int, int],
        step: int,
        hint: SliceHint | None = None,
    ) -> tuple[np.ndarray, float]:
        """(HxW bool mask, predicted IoU) for one XYXY box on slice ``index`` (or, with
        ``hint``, the hint's box and points).

        Embeddings are fetched ahead along ``step`` within ``limits``: 1 slice at the start
        of a walk, doubling up to the batch size while it goes on, so a walk that stops
        early encodes little more than it used.
        """
        t = time.perf_counter()
        if index not in self.cache:
            span = range(index, index + step * self.ahead, step)
            batch = [i for i in span if limits[0] <= i <= limits[1] and self.view.body[i]]
            self.cache.get([i for i in batch if i not in self.cache] or [index])
            self.ahead = min(2 * self.ahead, self.batch_size)
        (embedding,) = self.cache.get([index])
        t = self.timer.add("sam_encoder", t)
        h, w = embedding.original_size
        if hint is not None:
            mask, iou = refine_hint(self.engines.refiner, embedding, hint, (h, w))
        else:
            boxes = prompt_boxes(torch.tensor([box], dtype=torch.float32), 0.0, h, w)
            masks, ious = self.engines.refiner.refine(embedding, boxes)
            mask, iou = masks[0].cpu().numpy().astype(bool), float(ious[0])
        self.timer.add("refine", t)
        self.counts.box_prompts += 1
        return mask, iou

    def seed_hints(self, track: Track, hints: Sequence[SliceHint]) -> None:
        """Seed a hinted track at each of its hints and walk from each both ways, over the
        whole volume (no recognised extent bounds it)."""
        limits = (0, self.view.count - 1)
        seeds, stops, reports = [], [], []
        for hint in sorted(hints, key=lambda h: h.index):
            self.ahead = 1
            mask, iou = self.refine(hint.index, None, limits, +1, hint)
            reports.append(seeded_report(hint, self.view, mask, iou))
            if not mask.any():
                stops.append(self._stop(hint.index, hint.index, 0, "hint mask empty"))
                continue
            self._keep(track, hint.index, mask, iou, "hint")
            record = hint_record(hint, mask, iou)
            source = self.view.source_index(hint.index)
            seeds.append({"slice": source, "canonical": hint.index, "record": record})
        seed_slices = {s["canonical"] for s in seeds}
        for seed in seeds:
            for step in (-1, +1):
                stops.append(self._walk(track, seed["canonical"], step, limits, seed_slices))
        track.report.update(
            seeds=seeds, slices=self._slice_report(track), stops=stops, hints=reports
        )

    def _slice_report(self, track: Track) -> list[dict[str, Any]]:
        """The report's ``slices``: each kept slice's box, source and predicted IoU."""
        return [
            {
                "slice": self.view.source_index(i),
                "box": mask_box(m),
                "from": src,
                "refine_iou": round(q, 4),
            }
            for i, (m, q, src) in sorted(track.masks.items())
        ]

    def seed_and_propagate(self, track: Track, extent: tuple[int, int]) -> None:
        """Refine the track's picks (the seeds) and walk from each both ways."""
        cfg = self.config.strategy
        tolerance = int(round(cfg.extent_tolerance_mm / self.view.slice_spacing))
        limits = (max(0, extent[0] - tolerance), min(self.view.count - 1, extent[1] + tolerance))
        seeds, stops = [], []
        for index, pick in sorted(track.picks.items()):
            box = prompt_boxes(
                torch.tensor([pick.box]), self.config.refine.box_margin, *self.view.display_shape
            )[0].tolist()
            mask, iou = self.refine(index, box, limits, +1)
            if not mask.any():
                stops.append(self._stop(index, index, 0, "seed mask empty"))
                continue
            self._keep(track, index, mask, iou, "seed")
            x0, y0, x1, y1 = pick.box
            record = {
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": round(pick.score, 4),
                "parts": pick.parts,
                "refine_iou": iou,
                **({"side": track.side} if track.side else {}),
            }
            seeds.append(
                {"slice": self.view.source_index(index), "canonical": index, "record": record}
            )
        seed_slices = {s["canonical"] for s in seeds}
        for seed in seeds:
            for step in (-1, +1):
                stops.append(self._walk(track, seed["canonical"], step, limits, seed_slices))
        track.report.update(seeds=seeds, slices=self._slice_report(track), stops=stops)

    def _walk(
        self, track: Track, seed: int, step: int, limits: tuple[int, int], seeds: set[int]
    ) -> dict[str, Any]:
        """Propagate from ``seed`` along ``step``; the stop record. A bad slice
        (:meth:`_problem`) does not end the walk: the last good mask keeps prompting the
        next slices, and once one is good again the bad ones between are prompted with
        interpolated boxes; ``max_walk_failures`` bad slices in a row end it."""
        cfg = self.config.strategy
        previous, last_good, bad, first_problem = track.masks[seed][0], seed, [], ""
        index = seed + step
        self.ahead = 1
        while True:
            reason = self._blocked(index, limits, seeds)
            if reason:
                if reason == "reached another seed" and bad and index in track.masks:
                    self._fill(track, last_good, index, bad, limits, step)
                    bad = []
                return self._stop(seed, bad[0] if bad else index, step, reason, len(bad))
            h, w = previous.shape
            box = _grown_box(previous, cfg.propagation_margin, h, w)
            mask, iou = self.refine(index, box, limits, step)
            # After a bad slice the recogniser checks every slice until one is good.
            problem = self._problem(track, index, mask, iou, previous, doubt=bool(bad))
            if problem is None:
                self._keep(track, index, mask, iou, "propagation")
                if bad:
                    self._fill(track, last_good, index, bad, limits, step)
                previous, last_good, bad = mask, index, []
            else:
                first_problem = first_problem if bad else problem
                bad.append(index)
                if len(bad) >= cfg.max_walk_failures:
                    return self._stop(seed, bad[0], step, first_problem, len(bad))
            index += step

    def _problem(
        self,
        track: Track,
        index: int,
        mask: np.ndarray,
        iou: float,
        previous: np.ndarray,
        doubt: bool = False,
    ) -> str | None:
        """Why a propagated mask is bad, or None. An area jump alone is checked with the
        recogniser rather than refused (an organ can widen fast); so is a mask on a key
        slice, and every mask while in ``doubt`` (after a bad slice)."""
        cfg = self.config.strategy
        if not mask.any():
            return "mask vanished"
        if iou < cfg.min_refine_iou:
            return f"refine IoU {iou:.2f} below minimum"
        # Areas count from the area filter's speck size, so a structure of a few
        # pixels is not judged by one pixel of boundary noise.
        floor = speck_pixels(self.config.area, mask.shape, self.view.pixel_mm)
        ratio = (mask.sum() + floor) / (previous.sum() + floor)
        jump = not 1 / cfg.max_area_ratio <= ratio <= cfg.max_area_ratio
        if track.hinted:  # the user named the region: no recogniser to confirm a jump
            return f"area changed {ratio:.2f}x" if jump else None
        if (jump or doubt or index in self.keys) and not self._accepted(track, index, mask, iou):
            if jump:
                return f"area changed {ratio:.2f}x and the recogniser rejected it"
            if index in self.keys:
                return "recogniser rejected it at a key slice"
            return "recogniser rejected it after a bad slice"
        return None

    def _fill(
        self,
        track: Track,
        before: int,
        after: int,
        bad: Sequence[int],
        limits: tuple[int, int],
        step: int,
    ) -> None:
        """Prompt the ``bad`` slices between two good ones with boxes interpolated from
        the good masks' boxes; keep the non-empty masks."""
        boxes = {before: mask_box(track.masks[before][0]), after: mask_box(track.masks[after][0])}
        for index, box in gap_boxes(boxes, abs(after - before)).items():
            if index not in bad:
                continue
            mask, iou = self.refine(index, box, limits, step)
            if mask.any():
                self._keep(track, index, mask, iou, "interpolated")

    def _blocked(self, index: int, limits: tuple[int, int], seeds: set[int]) -> str | None:
        if not 0 <= index < self.view.count:
            return "end of the volume"
        if not limits[0] <= index <= limits[1]:
            return "left the extent"
        if not self.view.body[index]:
            return "slice without body"
        if index in seeds:
            return "reached another seed"
        return None

    def _accepted(self, track: Track, index: int, mask: np.ndarray, iou: float) -> bool:
        """Whether the recogniser accepts the propagated mask as the track's organ."""
        tensor = torch.from_numpy(mask)[None]
        rows, cols = np.nonzero(mask)
        box = torch.tensor([[cols.min(), rows.min(), cols.max(), rows.max()]], dtype=torch.float32)
        props = Proposals(tensor, box, torch.tensor([iou]), torch.ones(1), box[:, :2])
        (found,) = self.engines.recogniser.recognise(
            [self.view.image(index)], [props], [track.organ], [index]
        )
        return 0 in found.accepted.get(track.organ.name, [])

    def _keep(self, track: Track, index: int, mask: np.ndarray, iou: float, source: str) -> None:
        """Store a slice mask unless one with a higher predicted IoU is there."""
        if index not in track.masks or track.masks[index][1] < iou:
            track.masks[index] = (mask, iou, source)

    def _stop(self, seed: int, index: int, step: int, reason: str, bad: int = 0) -> dict[str, Any]:
        """The stop record of a walk: ``stopped_at`` the first slice not kept, ``bad`` the
        bad slices in a row it ended with."""
        source = self.view.source_index
        at = source(index) if 0 <= index < self.view.count else None
        record = {"seed": source(seed), "direction": step, "stopped_at": at, "reason": reason}
        return {**record, "bad_slices": bad} if bad else record


def _grown_box(mask: np.ndarray, margin: float, h: int, w: int) -> list[float]:
    """The mask's box grown by ``margin`` of its size per side, clipped to the slice."""
    grown = grow_boxes(torch.tensor([mask_box(mask)], dtype=torch.float32), margin)
    return prompt_boxes(grown, 0.0, h, w)[0].tolist()
