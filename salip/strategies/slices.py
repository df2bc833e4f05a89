"""The ``slices`` strategy: every body slice on its own, in batches, with the next batch
read (and prepared for the encoder) in a background thread; then, on the cascade, each
organ's picks are checked against their track along the axis and the short gaps between
them are prompted (:func:`settle_tracks`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import numpy as np
import torch

from salip.core.config import SegmentConfig
from salip.core.organs import Organ
from salip.core.prefetch import prefetch
from salip.core.timing import StageTimer
from salip.engines.boxes import prompt_boxes
from salip.engines.encoder import AUTO_SLICES_CPU
from salip.io.slicing import display_slice
from salip.strategies.assembly import empty_volume_mask, put_slice
from salip.strategies.base import (
    SliceEvidence,
    SliceOutput,
    SliceSegmenter,
    StrategyResult,
    WorkCounts,
)
from salip.strategies.cascade import Engines, cascade_batch, point_prompts, prompt_regions
from salip.strategies.embedding_cache import DEFAULT_CAPACITY, EmbeddingCache
from salip.strategies.evidence import record_box, record_score
from salip.strategies.hints import SliceHint, apply_slice_hints, hinted_organs
from salip.strategies.tracks import gap_boxes, off_track
from salip.strategies.volume_view import VolumeView

__all__ = [
    "settle_tracks",
    "SlicesStrategy",
]


class SlicesStrategy:
    """Each body slice decided alone: the SaLIP cascade on engines, or any slice segmenter.

    Build it with :meth:`from_engines` (the cascade, embeddings fetched through an
    :class:`~salip.strategies.embedding_cache.EmbeddingCache`) or :meth:`wrapping` (a
    :class:`~salip.strategies.base.SliceSegmenter`, e.g. a learned head or one injected
    through ``salip.segment(segmenter=...)``).
    """

    name = "slices"

    def __init__(
        self,
        *,
        batch_size: int,
        segmenter: SliceSegmenter | None = None,
        engines: Engines | None = None,
        config: SegmentConfig | None = None,
        timer: StageTimer | None = None,
        hints: Sequence[SliceHint] = (),
    ) -> None:
        if (segmenter is None) == (engines is None):
            raise ValueError("give exactly one of segmenter and engines")
        if hints and engines is None:
            raise ValueError("hints are prompted through the cascade's refiner: give engines")
        if engines is not None and config is None:
            raise ValueError("engines need the config they were built for")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.segmenter, self.engines = batch_size, segmenter, engines
        self.config, self.timer = config, timer or StageTimer()
        self.hints = tuple(hints)
        self.intensity_organs: Sequence[Organ] | None = getattr(segmenter, "intensity_organs", None)

    @classmethod
    def from_engines(
        cls,
        engines: Engines,
        config: SegmentConfig,
        batch_size: int,
        timer: StageTimer,
        hints: Sequence[SliceHint] = (),
    ) -> SlicesStrategy:
        """The SaLIP cascade on ``engines``, ``batch_size`` slices per step; each of
        ``hints`` replaces its target's mask on its slice (:func:`apply_slice_hints`)."""
        return cls(batch_size=batch_size, engines=engines, config=config, timer=timer, hints=hints)

    @classmethod
    def wrapping(
        cls, segmenter: SliceSegmenter, setting: int = 0, timer: StageTimer | None = None
    ) -> SlicesStrategy:
        """``segmenter`` called on batches of ``setting`` slices (0: its own
        ``slice_batch``, else 4)."""
        batch = setting or getattr(segmenter, "slice_batch", AUTO_SLICES_CPU)
        return cls(batch_size=batch, segmenter=segmenter, timer=timer)

    def run(
        self, view: VolumeView, organs: Sequence[Organ], *, progress: bool = False
    ) -> StrategyResult:
        from tqdm.auto import tqdm

        result = StrategyResult(
            masks={o.name: empty_volume_mask(view.mask_shape) for o in organs},
            chosen={o.name: [] for o in organs},
            # The cascade's recogniser looked at every body slice; a wrapped segmenter
            # says nothing about how sure it is.
            evidence={o.name: [] for o in organs} if self.engines is not None else None,
        )
        kept = view.body_indices()
        batches = [kept[i : i + self.batch_size] for i in range(0, len(kept), self.batch_size)]
        cache = None
        tally = {"point_prompts": 0}
        if self.engines is not None and self.config is not None:
            size = max(self.batch_size, DEFAULT_CAPACITY)
            cache = EmbeddingCache(view, self.engines.encoder, size)
            step, prepare = self._cascade_step(cache, self.engines, self.config, tally)
        else:
            step, prepare = self._segmenter_step()

        def load(indices: list[int]) -> tuple[list[int], list[np.ndarray], Any]:
            # Runs in the prefetch thread, while the previous batch is segmented.
            images = [view.image(i) for i in indices]
            return indices, images, prepare(images) if prepare is not None else None

        with tqdm(total=len(kept), desc="slices", unit="slice", disable=not progress) as bar:
            for indices, images, prepared in prefetch(batches, load):
                outputs = step(images, organs, indices, prepared)
                t = time.perf_counter()
                for index, out in zip(indices, outputs):
                    _place(result, view, index, out, organs)
                self.timer.add("assembly", t)
                bar.update(len(indices))
        result.details = {"counts": {"slices": len(kept)}}
        if cache is not None and self.engines is not None and self.config is not None:
            t = time.perf_counter()
            hinted = apply_slice_hints(result, view, self.hints, cache, self.engines.refiner)
            protected = {(h.organ, h.index) for h in self.hints}
            settled = settle_tracks(
                result, view, organs, cache, self.engines, self.config, protected
            )
            self.timer.add("refine", t)
            if result.evidence is not None:
                # The user named these regions: the recogniser's evidence (and the
                # confidence calibrated on it) does not speak for them.
                result.evidence.update({name: None for name in hinted_organs(self.hints)})
            counts = WorkCounts(
                encoded_slices=cache.encoded,
                proposal_slices=len(kept),
                point_prompts=tally["point_prompts"],
                box_prompts=sum(len(records) for records in result.chosen.values())
                + settled.pop("box_prompts"),
            )
            result.details = {"counts": dataclasses.asdict(counts), "tracks": settled}
            if hinted:
                result.details["hints"] = hinted
        return result

    def _cascade_step(
        self,
        cache: EmbeddingCache,
        engines: Engines,
        config: SegmentConfig,
        tally: dict[str, int],
    ) -> _Step:
        timer = self.timer
        # A volume's every accepted region is prompted, its pieces weighed in 3D later; a
        # 2D image has no third dimension to weigh them, so it keeps the picked ones.
        every_region = not cache.view.is_2d

        def step(
            images: list[np.ndarray], organs: Sequence[Organ], indices: list[int], prepared: Any
        ) -> list[SliceOutput]:
            t = time.perf_counter()
            embeddings = cache.get(indices, images, prepared)
            timer.add("sam_encoder", t)
            regions = prompt_regions(cache.view, indices, config.proposals)
            size = images[0].shape[:2]
            tally["point_prompts"] += point_prompts(config.proposals, regions, size)
            return cascade_batch(
                engines,
                config,
                images,
                embeddings,
                organs,
                timer,
                indices,
                every_region,
                cache.view.pixel_mm,
                regions,
            )

        return step, engines.encoder.prepare

    def _segmenter_step(self) -> _Step:
        segmenter = self.segmenter
        prepare = getattr(segmenter, "prepare", None)

        def step(
            images: list[np.ndarray], organs: Sequence[Organ], indices: list[int], prepared: Any
        ) -> Sequence[SliceOutput | dict[str, np.ndarray]]:
            extra = {"prepared": prepared} if prepare is not None else {}
            return segmenter(images, organs, indices, **extra)

        return step, prepare


#: One batch of the strategy, ``(images, organs, indices, prepared) -> outputs``, and the
#: preparation run one batch ahead in the prefetch thread (or None).
_Step = tuple[Callable[..., Sequence[Any]], Callable[[list[np.ndarray]], Any] | None]


def _place(
    result: StrategyResult,
    view: VolumeView,
    index: int,
    out: SliceOutput | dict[str, np.ndarray],
    organs: Sequence[Organ],
) -> None:
    """Put one slice's masks into the canonical masks and its records into ``chosen``."""
    out = out if isinstance(out, SliceOutput) else SliceOutput(masks=dict(out))
    for organ in organs:
        mask = np.asarray(out.masks[organ.name], dtype=bool)
        if view.is_2d:
            result.masks[organ.name] |= mask
        else:
            put_slice(result.masks[organ.name], index, view.axis, mask)
        records = out.chosen.get(organ.name, [])
        for rec in records:
            result.chosen[organ.name].append({"slice": index, **rec})
        said = None if result.evidence is None else result.evidence.get(organ.name)
        if said is None:
            continue
        if any("probability" not in r for r in records):
            # The paper's scoring gives no probabilities: the confidence model is
            # calibrated on contrast probabilities, so this organ gets none.
            result.evidence[organ.name] = None  # type: ignore[index]
            continue
        said += [SliceEvidence(index, record_score(r), record_box(r)) for r in records] or [
            SliceEvidence(index, 0.0)
        ]


def settle_tracks(
    result: StrategyResult,
    view: VolumeView,
    organs: Sequence[Organ],
    cache: EmbeddingCache,
    engines: Engines,
    config: SegmentConfig,
    protected: Container[tuple[str, int]] = (),
) -> dict[str, Any]:
    """Each organ's picks along the axis, per side for a pair, after every slice was
    decided alone:

    * a one-sided organ's slice whose box centre lies farther than ``track_distance_mm``
      from the track of its neighbouring slices is emptied (worst first), as the volume
      strategy rejects stray key-slice picks; ``(organ, slice)`` pairs in ``protected``
      (hinted slices) never are;
    * each run of at most ``max_gap_slices`` body slices with no pick between two picked
      slices is prompted with boxes interpolated from the two; a mask whose predicted IoU
      reaches ``min_refine_iou`` is added.

    Returns:
        JSON-ready: organ -> ``rejected`` and ``filled`` slices (as in the input file),
        and ``box_prompts``: the box prompts decoded here.
    """
    cfg, out, prompts = config.strategy, {}, 0
    for organ in organs:
        records = result.chosen[organ.name]
        sides = sorted({r.get("side") for r in records}, key=str) if organ.parts else [None]
        rejected: list[dict[str, Any]] = []
        filled: list[int] = []
        for side in sides:
            mine = [r for r in records if not organ.parts or r.get("side") == side]
            track = _track(mine)
            if not organ.parts and not view.is_2d:
                for index, distance in off_track(track, view.pixel_spacing, cfg.track_distance_mm):
                    if (organ.name, index) in protected:
                        continue
                    _clear(result, organ.name, index, view)
                    rejected.append(
                        {"slice": view.source_index(index), "distance_mm": round(distance, 1)}
                    )
            gaps = {} if view.is_2d else gap_boxes(track, config.assembly.max_gap_slices)
            for index, box in sorted(gaps.items()):
                if not view.body[index]:
                    continue
                prompts += 1
                if _fill(result, organ.name, index, box, side, view, cache, engines, config):
                    filled.append(view.source_index(index))
        if rejected or filled:
            out[organ.name] = {"rejected": rejected, "filled": filled}
    return {**out, "box_prompts": prompts}


def _track(records: Sequence[dict[str, Any]]) -> dict[int, list[float]]:
    """Slice -> the XYXY box holding the slice's records' boxes."""
    track: dict[int, list[float]] = {}
    for record in records:
        box = list(record_box(record))
        if record["slice"] in track:
            old = track[record["slice"]]
            box = [
                min(old[0], box[0]),
                min(old[1], box[1]),
                max(old[2], box[2]),
                max(old[3], box[3]),
            ]
        track[record["slice"]] = box
    return track


def _clear(result: StrategyResult, name: str, index: int, view: VolumeView) -> None:
    """Empty organ ``name``'s slice ``index`` and drop its records there."""
    put_slice(result.masks[name], index, view.axis, np.zeros(view.display_shape, dtype=bool))
    result.chosen[name] = [r for r in result.chosen[name] if r["slice"] != index]


def _fill(
    result: StrategyResult,
    name: str,
    index: int,
    box: list[float],
    side: str | None,
    view: VolumeView,
    cache: EmbeddingCache,
    engines: Engines,
    config: SegmentConfig,
) -> bool:
    """Prompt slice ``index`` with ``box``; add the mask when its predicted IoU reaches
    ``min_refine_iou``. Whether it was added."""
    (embedding,) = cache.get([index])
    h, w = embedding.original_size
    boxes = prompt_boxes(torch.tensor([box], dtype=torch.float32), 0.0, h, w)
    masks, iou = engines.refiner.refine(embedding, boxes)
    mask = masks[0].cpu().numpy().astype(bool)
    if not mask.any() or float(iou[0]) < config.strategy.min_refine_iou:
        return False
    current = np.asarray(display_slice(result.masks[name], False, view.axis, index), dtype=bool)
    put_slice(result.masks[name], index, view.axis, mask | current)
    x0, y0, x1, y1 = box
    record = {"slice": index, "bbox": [x0, y0, x1 - x0, y1 - y0], "from": "interpolated"}
    record["refine_iou"] = float(iou[0])
    result.chosen[name].append({**record, **({"side": side} if side else {})})
    return True
