"""Benchmark methods: the rows of the table, each a slice segmenter built per case.

A method is one ``[[methods]]`` table of a benchmark config: a row ``name``, a ``method``
kind from :data:`METHODS` and settings with the names of salip's config fields (the CLI flag
names with ``_`` for ``-``). Every kind says which settings it reads, and whether it reads
the reference masks (``uses_ground_truth``): only such methods are handed references, and
the table marks their rows.

================================  ====================================================
kind                              what it does
================================  ====================================================
``salip``                         the SaLIP cascade with its settings (zero-shot)
``sam-unprompted``                SAM's decoder with no prompt (zero-shot; one mask per
                                  slice, the same for every organ)
``sam-everything-oracle``         the everything-mode proposal best matching the
                                  reference slice (reads labels: proposal recall)
``sam-gt-box``                    SAM prompted with the tight box of each reference
                                  component per slice (reads labels: the paper's bound)
``head``                          a learned CLIP-driven head on SAM features (trained
                                  with labels: ``salip head train``, variant "clip")
``head-static``                   control: the same upsampler, plain per-class 1x1 head
``head-randtext``                 control: learned random class codes instead of CLIP
                                  text
================================  ====================================================

Adding a method is a subclass of :class:`Method` that builds a
:class:`~salip.strategies.cascade.SliceSegmenter` in :meth:`Method.segmenter`, plus an entry in
:data:`METHODS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from salip.core.config import ModelConfig, SegmentConfig, SegmenterConfig, flat_fields
from salip.core.errors import BenchmarkError, SalipError, did_you_mean
from salip.core.organs import Organ

if TYPE_CHECKING:
    from salip.models.clip import LoadedClip
    from salip.models.sam import LoadedSam
    from salip.models.sam_runtime import ImageEmbedding
    from salip.strategies.cascade import SliceOutput, SliceSegmenter

#: Settings every method reads: how the image becomes slices, and the encoder batch.
_SLICING = ("axis", "window", "modality", "percentile_low", "percentile_high")
_COMMON = (*_SLICING, "encoder_batch_size", "largest_component")
_PROPOSALS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "min_mask_region_area",
    "min_area",
    "max_area",
)
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
#: Chosen by the method kind (``method``) or by head kinds only (``head``).
_SEGMENTER_FIELDS = tuple(f.name for f in dataclasses.fields(SegmenterConfig))


@dataclass
class Models:
    """The models of a benchmark run, loaded once.

    Attributes:
        sam: the SAM model.
        clip: the CLIP model, or None when no method needs it.
        device: the torch device they are on ("cpu", "cuda", ...).
    """

    sam: LoadedSam
    clip: LoadedClip | None
    device: str


@dataclass(frozen=True)
class CaseInput:
    """What a method learns about the case it segments.

    Attributes:
        organs: the organs to segment, in order.
        modality: the image's modality ("ct", "mr", "xray", "us"), for prompts.
        is_2d: whether the image is a 2D image (one slice, index 0).
        references: organ -> bool reference mask in salip's canonical layout (XxYxZ RAS+,
            or HxW for 2D images); only for methods that use the ground truth, else None.
    """

    organs: tuple[Organ, ...]
    modality: str
    is_2d: bool
    references: Mapping[str, np.ndarray] | None = None


class Method:
    """One row of the table: a method kind with its settings.

    Subclasses set the class attributes and implement :meth:`segmenter`.

    Attributes:
        kind: the ``method`` value selecting this class.
        uses_ground_truth: the method reads the reference masks (an oracle row).
        needs_clip: the method needs the CLIP model.
        settings: the config field names a ``[[methods]]`` table may set; None: all of them
            except the model fields.
        defaults: settings applied before the table's own.
        name: the row label.
        config: the full settings (models included).
        options: the settings as given in the table.
    """

    kind: ClassVar[str]
    uses_ground_truth: ClassVar[bool] = False
    needs_clip: ClassVar[bool] = False
    settings: ClassVar[tuple[str, ...] | None] = _COMMON
    defaults: ClassVar[dict[str, Any]] = {"largest_component": False}

    def __init__(self, name: str, config: SegmentConfig, options: Mapping[str, Any]):
        self.name, self.config, self.options = name, config, dict(options)

    def segmenter(self, models: Models, case: CaseInput) -> SliceSegmenter:
        """A slice segmenter for one case (see :class:`~salip.strategies.cascade.SliceSegmenter`)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for run.json and the per-case fingerprints."""
        return {
            "name": self.name,
            "method": self.kind,
            "uses_ground_truth": self.uses_ground_truth,
            "options": self.options,
            "config": dataclasses.asdict(self.config),
        }


class SalipMethod(Method):
    """The SaLIP cascade (zero-shot)."""

    kind = "salip"
    needs_clip = True
    settings = None
    defaults: ClassVar[dict[str, Any]] = {}

    def segmenter(self, models: Models, case: CaseInput) -> SliceSegmenter:
        from salip.api.pipeline import build_cascade

        if models.clip is None:
            raise BenchmarkError("the salip method needs the CLIP model, which was not loaded.")
        cascade, _ = build_cascade(
            models.sam, models.clip, case.organs, self.config, case.modality, device=models.device
        )
        return cascade


class _EncodedSlices:
    """Base of the SAM baselines: encode the batch once, then one answer per slice."""

    def __init__(self, method: Method, models: Models, case: CaseInput):
        from salip.models.precision import resolve_precision
        from salip.strategies.cascade import encoder_batch, slice_batch

        self.model, self.config, self.case = models.sam.model, method.config, case
        self.precision = resolve_precision(method.config.models.precision, models.device)
        setting = method.config.proposals.encoder_batch_size
        self.batch = encoder_batch(setting, models.device)
        self.slice_batch = slice_batch(setting, models.device)

    def __call__(
        self, images: Sequence[np.ndarray], organs: Sequence[Organ], indices: Sequence[int]
    ) -> list[SliceOutput]:
        import torch

        from salip.models.sam_runtime import encode_images, fast_encoder

        with torch.no_grad():
            embeddings = encode_images(
                self.model,
                images,
                self.batch,
                precision=self.precision,
                encoder=fast_encoder(self.model, compile=self.config.models.compile),
            )
            return [
                self.segment_slice(emb, index, organs)
                for emb, index in zip(embeddings, indices, strict=True)
            ]

    def reference(self, organ: Organ, index: int) -> np.ndarray:
        """The organ's HxW bool reference slice in display orientation."""
        from salip.io.slicing import display_slice

        if self.case.references is None:
            raise BenchmarkError("this method reads references, but none were given.")
        volume = self.case.references[organ.name]
        view = display_slice(volume, self.case.is_2d, self.config.slicing.axis, index)
        return np.ascontiguousarray(view, dtype=bool)

    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        raise NotImplementedError


class _Unprompted(_EncodedSlices):
    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        from salip.strategies.baselines import sam_unprompted
        from salip.strategies.cascade import SliceOutput

        mask = sam_unprompted(self.model, embedding)
        return SliceOutput(masks={o.name: mask for o in organs})


class _GtBox(_EncodedSlices):
    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        from salip.strategies.baselines import sam_gt_box
        from salip.strategies.cascade import SliceOutput

        return SliceOutput(
            masks={
                o.name: sam_gt_box(self.model, embedding, self.reference(o, index)) for o in organs
            }
        )


class _Oracle(_EncodedSlices):
    def segment_slice(
        self, embedding: ImageEmbedding, index: int, organs: Sequence[Organ]
    ) -> SliceOutput:
        from salip.engines.area_filter import area_filter
        from salip.engines.proposals import generate_proposals
        from salip.strategies.baselines import everything_oracle
        from salip.strategies.cascade import SliceOutput

        proposals = area_filter(
            generate_proposals(self.model, embedding, self.config.proposals), self.config.area
        )
        out = SliceOutput(masks={}, chosen={})
        for organ in organs:
            mask, iou = everything_oracle(proposals, self.reference(organ, index))
            out.masks[organ.name] = mask
            out.chosen[organ.name] = [{"oracle_iou": iou}] if mask.any() else []
        return out


class SamUnprompted(Method):
    """SAM's decoder with no prompt: the SaLIP paper's "unprompted SAM" row."""

    kind = "sam-unprompted"

    def segmenter(self, models: Models, case: CaseInput) -> SliceSegmenter:
        return _Unprompted(self, models, case)


class SamGtBox(Method):
    """SAM prompted with the tight box of each reference component per slice."""

    kind = "sam-gt-box"
    uses_ground_truth = True
    settings = (*_COMMON, "box_margin")

    def segmenter(self, models: Models, case: CaseInput) -> SliceSegmenter:
        return _GtBox(self, models, case)


class SamEverythingOracle(Method):
    """The area-filtered everything-mode proposal best matching the reference slice."""

    kind = "sam-everything-oracle"
    uses_ground_truth = True
    settings = (*_COMMON, *_PROPOSALS)

    def segmenter(self, models: Models, case: CaseInput) -> SliceSegmenter:
        return _Oracle(self, models, case)


class HeadMethod(Method):
    """A learned head (``salip head train``, variant "clip"): the comparator trained with
    labels on the same SAM. Its ``head`` setting names the head.pt; the file's variant must
    match the kind, and its SAM the run's (checked when it loads).

    Post-processing is the cascade's: ``largest_component`` defaults as for ``salip``.
    """

    kind = "head"
    variant: ClassVar[str] = "clip"
    settings = (*_COMMON, "head")
    defaults: ClassVar[dict[str, Any]] = {"method": "head"}

    def __init__(self, name: str, config: SegmentConfig, options: Mapping[str, Any]):
        from salip.core.hashing import file_sha256
        from salip.models.head import read_head_manifest

        super().__init__(name, config, options)
        # A missing head setting is refused by SegmentConfig's validation before this.
        path = str(config.segmenter.head)
        try:
            manifest = read_head_manifest(path)
        except SalipError as exc:
            raise BenchmarkError(f"method '{name}' ({self.kind}): {exc}") from exc
        if manifest.get("variant") != self.variant:
            kind = next(
                (
                    k
                    for k, c in METHODS.items()
                    if getattr(c, "variant", None) == manifest.get("variant")
                ),
                "?",
            )
            raise BenchmarkError(
                f"method '{name}': {path} is a '{manifest.get('variant')}' head, but method = "
                f"'{self.kind}' expects a '{self.variant}' head; use method = '{kind}'."
            )
        self.head_sha256 = file_sha256(Path(path))
        self._loaded: tuple[Any, Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "head_sha256": self.head_sha256}

    def segmenter(self, models: Models, case: CaseInput) -> SliceSegmenter:
        from salip.models.head import load_head
        from salip.strategies.head import HeadSegmenter

        if self._loaded is None or self._loaded[0] is not models.sam:
            head = load_head(self.config.segmenter.head, models.sam, device=models.device)
            self._loaded = (models.sam, head)
        segmenter = HeadSegmenter.for_config(
            self._loaded[1], models.sam, self.config, models.device
        )
        segmenter.check_organs(case.organs)
        return segmenter


class HeadStatic(HeadMethod):
    """Control: the head's upsampler with a plain per-class 1x1 conv (no text, no
    controller)."""

    kind = "head-static"
    variant = "static"


class HeadRandText(HeadMethod):
    """Control: the CLIP-driven head with learned random class codes instead of CLIP text."""

    kind = "head-randtext"
    variant = "randtext"


#: Method kinds by their ``method`` value.
METHODS: dict[str, type[Method]] = {
    cls.kind: cls
    for cls in (
        SalipMethod,
        SamUnprompted,
        SamEverythingOracle,
        SamGtBox,
        HeadMethod,
        HeadStatic,
        HeadRandText,
    )
}


def make_method(table: Mapping[str, Any], models: Mapping[str, Any]) -> Method:
    """Build a method from one ``[[methods]]`` table.

    Args:
        table: ``name``, ``method`` and settings (config field names).
        models: the config's ``[models]`` settings (model config field names).

    Raises:
        BenchmarkError: a missing name, an unknown kind, a setting the kind does not read
            (the message lists the valid ones) or an invalid value.
    """
    if not isinstance(table, Mapping):
        raise BenchmarkError(f"a method must be a table of keys, not {table!r}.")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BenchmarkError(f"a method has no `name` (got {name!r}); it is the table's row label.")
    kind = table.get("method")
    if kind not in METHODS:
        hint = did_you_mean(str(kind), METHODS)
        raise BenchmarkError(
            f"method '{name}': unknown method {kind!r}.{hint} Valid methods: {', '.join(METHODS)}."
        )
    cls = METHODS[kind]
    options = {k: v for k, v in table.items() if k not in ("name", "method")}
    allowed = cls.settings
    if allowed is None:
        allowed = tuple(f for f in flat_fields() if f not in (*_MODEL_FIELDS, *_SEGMENTER_FIELDS))
    bad = [key for key in options if key not in allowed]
    if bad:
        where = " (model settings belong in [models])" if set(bad) & set(_MODEL_FIELDS) else ""
        hint = did_you_mean(bad[0], allowed, cutoff=0.6)
        raise BenchmarkError(
            f"method '{name}' ({kind}): setting(s) {', '.join(bad)} not read by this "
            f"method{where}.{hint} Valid settings: {', '.join(sorted(allowed))}."
        )
    try:
        config = SegmentConfig().replace(**models).replace(**{**cls.defaults, **options})
    except (SalipError, TypeError) as exc:
        raise BenchmarkError(f"method '{name}' ({kind}): {exc}") from exc
    return cls(name, config, options)
