"""The one factory from a method name and settings to a strategy on engines.

:func:`salip.segment` (``--method``), the benchmark (its ``[[methods]]`` rows) and
bench-speed all build what they run here. A method kind is a row of :data:`METHODS`, and
``--method`` names one (``cascade``, ``head``):

================================  ====================================================
kind                              what it builds
================================  ====================================================
``cascade``                       the SaLIP cascade: SAM encoder, SAM everything mode,
                                  crops + CLIP, SAM box refinement (zero-shot)
``head``                          a learned CLIP-driven head on SAM features (trained
                                  with labels: ``salip head train``, variant "clip")
``head-static``                   control: the same upsampler, plain per-class 1x1 head
``head-randtext``                 control: learned random class codes instead of CLIP
                                  text
================================  ====================================================

The benchmark adds its own kinds (the SAM baselines and the simulated engines, in
:mod:`salip.apps.bench.kinds`) and passes the whole table to :func:`build` as ``kinds``,
so the segmenting path never imports evaluation code.

Settings are :class:`~salip.core.config.SegmentConfig` fields, except a kind's own
``extra_settings`` (:class:`MethodKind`), which are no config fields and reach its builder
as ``extra`` (for the benchmark's ``simulated`` kind: the noise preset, seed and noise
overrides). What a kind learns of the input besides the image is on :class:`CaseInput`:
reference masks for ``uses_ground_truth`` kinds, the full label map for
``needs_label_map`` kinds. Kinds with ``needs_sam = False`` get no models (``models`` is
None).

Adding a method is a builder function and a :class:`MethodKind` in a table of kinds; a new
engine is a class with the role's method (see :mod:`salip.engines`) put into an
:class:`~salip.strategies.cascade.Engines` by a builder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from salip.core.config import ModelConfig, SegmentConfig
from salip.core.errors import ConfigError, did_you_mean
from salip.core.organs import Organ, get_organ
from salip.core.timing import StageTimer
from salip.engines.encoder import SamEncoder, slice_batch
from salip.engines.proposer import SamProposer
from salip.engines.recogniser import ClipRecogniser
from salip.engines.refiner import SamRefiner
from salip.models.clip import LoadedClip
from salip.models.head import LoadedHead
from salip.models.sam import LoadedSam
from salip.strategies.base import Strategy
from salip.strategies.cascade import Engines
from salip.strategies.hints import SliceHint
from salip.strategies.slices import SlicesStrategy
from salip.strategies.volume import VolumeStrategy

__all__ = [
    "METHODS",
    "build",
    "Builder",
    "Built",
    "cascade_strategy",
    "CaseInput",
    "get_method",
    "LazyModels",
    "load_models",
    "MethodKind",
    "Models",
    "slice_only",
    "window_organs",
]

logger = logging.getLogger(__name__)


@dataclass
class Models:
    """Loaded models, shared by every method and case of a run.

    Attributes:
        sam: the SAM model.
        clip: the CLIP model, or None when no method needs it.
        device: the torch device they are on ("cpu", "cuda", ...).
        heads: head.pt path -> loaded head (filled by :meth:`head`).
        text_embeddings: CLIP text embeddings of description sets, computed once per run
            and shared by every case (filled by the recognisers).
    """

    sam: LoadedSam
    clip: LoadedClip | None
    device: str
    heads: dict[str, LoadedHead] = field(default_factory=dict)
    text_embeddings: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def head(self, path: str) -> LoadedHead:
        """The learned head at ``path`` on this SAM, loaded once."""
        from salip.models.head import load_head

        if path not in self.heads:
            self.heads[path] = load_head(path, self.sam, device=self.device)
        return self.heads[path]


def load_models(config: ModelConfig, *, clip: bool) -> Models:
    """Load SAM, and CLIP when ``clip``, on ``config.device`` (resolved)."""
    from salip.models.clip import load_clip
    from salip.models.device import resolve_device
    from salip.models.precision import resolve_precision
    from salip.models.sam import load_sam
    from salip.models.sam_onnx import resolve_runtime

    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    sam = load_sam(
        config.sam_checkpoint,
        device=device,
        model_type=config.sam_model_type,
        preprocess=config.sam_preprocess,
        runtime=resolve_runtime(config.runtime, device, precision, config.compile),
    )
    loaded = None
    if clip:
        loaded = load_clip(
            config.clip_model, config.clip_pretrained, device=device,
            quick_gelu=config.clip_quick_gelu,
        )  # fmt: skip
    return Models(sam, loaded, device)


class LazyModels:
    """Loads the models on first need, then hands the same ones out (a run's, or one
    worker's, models: every case it computes shares them).

    Call it as a run's model source, ``models(kind, config, timer) -> Models``
    (:func:`salip.api.pipeline.segment_case`), or ask with :meth:`load`.

    Args:
        config: the models to load when :meth:`load` is given none.
        clip: whether :meth:`load` loads CLIP when not told.
    """

    def __init__(self, config: ModelConfig | None = None, *, clip: bool = False) -> None:
        self.config, self.clip = config, clip
        self.loaded: Models | None = None

    def load(
        self,
        config: ModelConfig | None = None,
        *,
        clip: bool | None = None,
        timer: StageTimer | None = None,
    ) -> Models:
        """The loaded models; loads them (timed as ``load_models``) the first time, and
        again with CLIP when CLIP is needed and was not loaded."""
        clip = self.clip if clip is None else clip
        if self.loaded is None or (clip and self.loaded.clip is None):
            config = config or self.config
            if config is None:
                raise ConfigError("LazyModels: no model settings to load from.")
            start = time.perf_counter()
            self.loaded = load_models(config, clip=clip)
            took = time.perf_counter() - start
            logger.info("models loaded on %s in %.1f s", self.loaded.device, took)
            if timer is not None:
                timer.add("load_models", start)
        return self.loaded

    def __call__(self, kind: MethodKind, config: SegmentConfig, timer: StageTimer) -> Models:
        return self.load(config.models, clip=kind.needs_clip, timer=timer)


@dataclass(frozen=True)
class CaseInput:
    """What a method learns about the input it segments.

    Attributes:
        organs: the organs to segment, in order.
        modality: the image's modality ("ct", "mr", "xray", "us"), for prompts.
        is_2d: whether the image is a 2D image (one slice, index 0).
        references: organ -> bool reference mask in salip's canonical layout (XxYxZ RAS+,
            or HxW for 2D images); only for methods that use the ground truth, else None.
        label_map: the case's FULL reference label map (every label of the file, not only
            the target organs) as ``(labels, names)``: a non-negative integer array in the
            canonical layout of ``references`` (``salip.io.to_canonical`` of the label file)
            and label value -> class name (the dataset's names; unnamed values are
            ``label_<value>``); only for kinds that ``needs_label_map``, else None.
        spacing: voxel size in mm along the canonical axes (None: unknown, 1 mm).
        hints: the user's hints, mapped onto the canonical volume; only the cascade's
            strategies take them.
    """

    organs: tuple[Organ, ...]
    modality: str
    is_2d: bool
    references: Mapping[str, np.ndarray] | None = None
    label_map: tuple[np.ndarray, Mapping[int, str]] | None = None
    spacing: tuple[float, ...] | None = None
    hints: tuple[SliceHint, ...] = ()


@dataclass
class Built:
    """A method ready to run: its strategy, and the report's ``models`` entry (JSON-ready:
    device, models, prompts, scoring)."""

    strategy: Strategy
    identity: dict[str, Any]


#: A method kind's builder: (models, settings, case, timer, extra) -> what to run. ``models``
#: is None for kinds that need no SAM; ``extra`` holds the kind's ``extra_settings``.
Builder = Callable[[Any, SegmentConfig, CaseInput, StageTimer, Mapping[str, Any]], Built]


@dataclass(frozen=True)
class MethodKind:
    """One method kind.

    Attributes:
        name: the kind's name (``--method`` and the benchmark's ``method``).
        build: its builder.
        uses_ground_truth: reads the reference masks (an oracle row of the benchmark).
        needs_clip: needs the CLIP model.
        head_variant: for learned heads, the variant its head.pt must have; None otherwise.
        needs_sam: needs the SAM model (False: the builder gets ``models=None`` and nothing
            is loaded for it).
        needs_label_map: reads the case's full label map (:attr:`CaseInput.label_map`).
        extra_settings: the kind's own settings, which are no config fields; the builder
            gets them as ``extra``.
        read_extra: checks ``extra`` (raises ConfigError) and returns its JSON-ready
            normalised form, defaults filled in (for reports and fingerprints); None for
            kinds without extra settings.
    """

    name: str
    build: Builder
    uses_ground_truth: bool = False
    needs_clip: bool = False
    head_variant: str | None = None
    needs_sam: bool = True
    needs_label_map: bool = False
    extra_settings: tuple[str, ...] = ()
    read_extra: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None

    def check_extra(self, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        """``extra`` checked and normalised (:attr:`read_extra`); {} for none.

        Raises:
            ConfigError: a setting the kind does not have (the message lists the valid
                ones), or an invalid value.
        """
        extra = dict(extra or {})
        unknown = [key for key in extra if key not in self.extra_settings]
        if unknown:
            valid = ", ".join(self.extra_settings) or "none"
            hint = did_you_mean(str(unknown[0]), self.extra_settings)
            raise ConfigError(
                f"method {self.name} has no setting(s) {', '.join(map(str, unknown))}.{hint} "
                f"Its own settings: {valid}."
            )
        return self.read_extra(extra) if self.read_extra is not None else {}


def _build_cascade(
    models: Models,
    config: SegmentConfig,
    case: CaseInput,
    timer: StageTimer,
    extra: Mapping[str, Any],
) -> Built:
    """The SaLIP cascade under the ``slices`` strategy."""
    from salip.core.organs import load_competitors
    from salip.core.prompts import load_prompts, prompts_dir
    from salip.models.registry import salip_home

    if models.clip is None:
        raise ConfigError("the salip method needs the CLIP model, which was not loaded.")
    scoring, organs, sam = config.scoring, list(case.organs), models.sam
    folder = scoring.prompts_dir
    start = time.perf_counter()
    prompts = {o.name: load_prompts(o, case.modality, folder) for o in organs}
    competitors = {}
    if scoring.scoring == "contrast":
        competitors = {o.name: load_competitors(o, case.modality, organs, folder) for o in organs}
    timer.add("load_prompts", start)
    text_cache = salip_home() / "cache" / "text"
    recogniser = ClipRecogniser(
        models.clip,
        prompts,
        config,
        models.device,
        timer,
        competitors,
        text_cache,
        models.text_embeddings,
    )
    engines = Engines(
        SamEncoder.for_config(sam, config, models.device),
        SamProposer(sam, config.proposals, models.device),
        recogniser,
        SamRefiner(sam),
    )
    batch = slice_batch(config.proposals.encoder_batch_size, models.device)
    strategy = cascade_strategy(engines, config, case, batch, timer)
    identity = {
        "device": models.device,
        "sam": sam.identity(),
        "clip": models.clip.identity(),
        "prompts_dir": str(prompts_dir(folder)),
        "prompts": {
            name: {
                "modality": p.modality,
                "requested_modality": p.requested_modality,
                "count": len(p.descriptions),
                "sha256": p.sha256(),
                **p.provenance,
            }
            for name, p in prompts.items()
        },
        "scoring": {
            "mode": scoring.scoring,
            "logit_scale": round(recogniser.scorer.logit_scale, 4),
            "classes": recogniser.classes,
            "text_cache": {
                "dir": str(text_cache),
                "hits": recogniser.scorer.cache_hits,
                "misses": recogniser.scorer.cache_misses,
            },
        },
    }
    return Built(strategy, identity)


def cascade_strategy(
    engines: Engines, config: SegmentConfig, case: CaseInput, batch: int, timer: StageTimer
) -> Strategy:
    """The strategy of ``config.strategy`` on cascade engines (``auto``: volume); a 2D image
    is one slice, so there the volume strategy is the slices strategy. The case's hints
    steer either."""
    if config.strategy.strategy in ("auto", "volume") and not case.is_2d:
        return VolumeStrategy(engines, config, batch, timer, case.hints)
    return SlicesStrategy.from_engines(engines, config, batch, timer, case.hints)


def slice_only(kind: str, config: SegmentConfig) -> None:
    """Refuse the volume strategy for methods that decide slice by slice (``auto`` is
    slices for them)."""
    if config.strategy.strategy == "volume":
        raise ConfigError(
            f"the {kind} method segments slice by slice; --strategy "
            f"{config.strategy.strategy} needs the cascade's engines (--method cascade). "
            "Drop --strategy or use --strategy slices."
        )


def _build_head(
    models: Models,
    config: SegmentConfig,
    case: CaseInput,
    timer: StageTimer,
    extra: Mapping[str, Any],
) -> Built:
    """A learned head (any variant) under the ``slices`` strategy."""
    from salip.strategies.head import HeadSegmenter

    slice_only("head", config)
    if case.hints:
        raise ConfigError(
            "hints are prompted through SAM's decoder by the cascade; the learned head does "
            "not take them. Drop the hints or use --method cascade."
        )
    head = models.head(str(config.segmenter.head))
    trained_axis = head.slicing.get("axis")
    if trained_axis and trained_axis != config.slicing.axis:
        logger.warning(
            "the head was trained on %s slices; segmenting %s slices (--axis)",
            trained_axis,
            config.slicing.axis,
        )
    segmenter = HeadSegmenter.for_config(head, models.sam, config, models.device)
    segmenter.check_organs(case.organs)
    strategy = SlicesStrategy.wrapping(segmenter, config.proposals.encoder_batch_size, timer)
    identity = {"device": models.device, "sam": models.sam.identity(), "head": head.identity()}
    return Built(strategy, identity)


#: Method kinds by name.
METHODS: dict[str, MethodKind] = {
    kind.name: kind
    for kind in (
        MethodKind("cascade", _build_cascade, needs_clip=True),
        MethodKind("head", _build_head, head_variant="clip"),
        MethodKind("head-static", _build_head, head_variant="static"),
        MethodKind("head-randtext", _build_head, head_variant="randtext"),
    )
}


def get_method(name: str, kinds: Mapping[str, MethodKind] | None = None) -> MethodKind:
    """The method kind called ``name`` in ``kinds`` (default :data:`METHODS`).

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    kinds = METHODS if kinds is None else kinds
    if name not in kinds:
        hint = did_you_mean(str(name), kinds)
        raise ConfigError(f"unknown method {name!r}.{hint} Valid methods: {', '.join(kinds)}.")
    return kinds[name]


def window_organs(
    kind: MethodKind, models: Models, config: SegmentConfig, organs: Sequence[Organ]
) -> list[Organ]:
    """The organs whose window maps intensities to 8 bits: a learned head's own classes
    (as in its training), else ``organs``."""
    if kind.head_variant is None:
        return list(organs)
    return [get_organ(name) for name in models.head(str(config.segmenter.head)).classes]


def build(
    name: str,
    models: Models | None,
    config: SegmentConfig,
    case: CaseInput,
    timer: StageTimer | None = None,
    extra: Mapping[str, Any] | None = None,
    kinds: Mapping[str, MethodKind] | None = None,
) -> Built:
    """Build method ``name`` for one input.

    Args:
        name: a key of ``kinds``.
        models: the loaded models (CLIP when the kind ``needs_clip``); None for kinds that
            need no SAM (``needs_sam`` False).
        config: all settings.
        case: the organs, modality, 2D flag and (for oracle kinds) references, (for
            ``needs_label_map`` kinds) the full label map.
        timer: stage timer the strategy and engines add to.
        extra: the kind's own settings (:attr:`MethodKind.extra_settings`), e.g. the
            simulated kind's ``{"noise": "low", "seed": 1}``.
        kinds: the table of method kinds (default :data:`METHODS`; the benchmark's
            :data:`salip.apps.bench.kinds.BENCH_METHODS` adds its own).

    Raises:
        ConfigError: an unknown method, setting or value, or no models for a kind that
            needs SAM.
    """
    kind = get_method(name, kinds)
    kind.check_extra(extra)
    if models is None and kind.needs_sam:
        raise ConfigError(f"the {name} method needs the SAM model, which was not loaded.")
    return kind.build(models, config, case, timer or StageTimer(), dict(extra or {}))
