"""The ``slices`` strategy: every body slice on its own, in batches, with the next batch
read (and prepared for the encoder) in a background thread."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from salip.core.config import SegmentConfig
from salip.core.organs import Organ
from salip.core.prefetch import prefetch
from salip.core.timing import StageTimer
from salip.engines.encoder import AUTO_SLICES_CPU
from salip.strategies.assembly import empty_volume_mask, put_slice
from salip.strategies.base import SliceOutput, SliceSegmenter, StrategyResult, WorkCounts
from salip.strategies.cascade import Engines, cascade_batch
from salip.strategies.embedding_cache import DEFAULT_CAPACITY, EmbeddingCache
from salip.strategies.volume_view import VolumeView


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
    ) -> None:
        if (segmenter is None) == (engines is None):
            raise ValueError("give exactly one of segmenter and engines")
        if engines is not None and config is None:
            raise ValueError("engines need the config they were built for")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.segmenter, self.engines = batch_size, segmenter, engines
        self.config, self.timer = config, timer or StageTimer()
        self.intensity_organs: Sequence[Organ] | None = getattr(segmenter, "intensity_organs", None)

    @classmethod
    def from_engines(
        cls, engines: Engines, config: SegmentConfig, batch_size: int, timer: StageTimer
    ) -> SlicesStrategy:
        """The SaLIP cascade on ``engines``, ``batch_size`` slices per step."""
        return cls(batch_size=batch_size, engines=engines, config=config, timer=timer)

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
        )
        kept = view.body_indices()
        batches = [kept[i : i + self.batch_size] for i in range(0, len(kept), self.batch_size)]
        cache = None
        if self.engines is not None and self.config is not None:
            size = max(self.batch_size, DEFAULT_CAPACITY)
            cache = EmbeddingCache(view, self.engines.encoder, size)
            step, prepare = self._cascade_step(cache, self.engines, self.config)
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
        if cache is not None and self.config is not None:
            grid = self.config.proposals.points_per_side**2
            counts = WorkCounts(
                encoded_slices=cache.encoded,
                proposal_slices=len(kept),
                point_prompts=len(kept) * grid,
                box_prompts=sum(len(records) for records in result.chosen.values()),
            )
            result.details = {"counts": dataclasses.asdict(counts)}
        return result

    def _cascade_step(
        self, cache: EmbeddingCache, engines: Engines, config: SegmentConfig
    ) -> _Step:
        timer = self.timer

        def step(
            images: list[np.ndarray], organs: Sequence[Organ], indices: list[int], prepared: Any
        ) -> list[SliceOutput]:
            t = time.perf_counter()
            embeddings = cache.get(indices, images, prepared)
            timer.add("sam_encoder", t)
            return cascade_batch(engines, config, images, embeddings, organs, timer, indices)

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
        for rec in out.chosen.get(organ.name, []):
            result.chosen[organ.name].append({"slice": index, **rec})
