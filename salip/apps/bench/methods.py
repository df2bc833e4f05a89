"""Benchmark methods: the rows of the table, each built per case by the method factory.

A method is one ``[[methods]]`` table of a benchmark config: a row ``name``, a ``method``
kind from :data:`salip.apps.bench.kinds.BENCH_METHODS` (the tables of
:mod:`salip.api.factory` and :mod:`salip.apps.bench.kinds` say what each builds) and
settings with the names of salip's config fields (the CLI flag names with ``_`` for ``-``).
Every kind says here which settings it reads (:data:`SETTINGS`), and in the factory whether
it reads the reference masks (``uses_ground_truth``): only such methods are handed
references, and the table marks their rows. A kind's own settings that are no config fields
(:attr:`salip.api.factory.MethodKind.extra_settings`, e.g. the ``simulated`` kind's
``noise``, ``seed`` and noise overrides) are read from the same table, checked when the
config is loaded, and handed to the builder as ``extra`` (:attr:`Method.extra`).

Adding a method is a builder in :mod:`salip.api.factory` (a product method) or
:mod:`salip.apps.bench.kinds` (an evaluation-only one), plus its settings here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from salip.api.factory import Built, CaseInput, MethodKind, Models, build
from salip.apps.bench.kinds import BENCH_METHODS
from salip.core.config import (
    MethodConfig,
    ModelConfig,
    SegmentConfig,
    StrategyConfig,
    flat_fields,
)
from salip.core.errors import BenchmarkError, ConfigError, SalipError, did_you_mean
from salip.core.hashing import file_sha256
from salip.models.head import read_head_manifest

__all__ = [
    "SETTINGS",
    "make_method",
    "Method",
]

logger = logging.getLogger(__name__)

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
    "min_area_mm2",
    "max_area",
)
_STRATEGY = tuple(f.name for f in dataclasses.fields(StrategyConfig))
#: What the cascade reads besides the strategy: area filter, recognition picks, box margin,
#: and how each organ is decided from the recognition evidence.
_CASCADE = (
    "min_area", "min_area_mm2", "max_area", "top_k", "laterality", "contrast_margin", "box_margin",
    "min_confidence", "max_gap_slices",
)  # fmt: skip
_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
#: Chosen by the method kind (``method``) or by head kinds only (``head``).
_SEGMENTER_FIELDS = tuple(f.name for f in dataclasses.fields(MethodConfig))

#: Per kind: the config field names a ``[[methods]]`` table may set (None: all of them
#: except the model fields), and the settings applied before the table's own. A kind's
#: ``extra_settings`` (factory) are allowed besides.
SETTINGS: dict[str, tuple[tuple[str, ...] | None, dict[str, Any]]] = {
    "cascade": (None, {}),
    "sam-unprompted": (_COMMON, {"largest_component": False}),
    "sam-everything-oracle": ((*_COMMON, *_PROPOSALS), {"largest_component": False}),
    "sam-gt-box": ((*_COMMON, "box_margin"), {"largest_component": False}),
    # Post-processing is the cascade's: largest_component defaults as for salip.
    "head": ((*_COMMON, "head"), {"method": "head"}),
    "head-static": ((*_COMMON, "head"), {"method": "head"}),
    "head-randtext": ((*_COMMON, "head"), {"method": "head"}),
    # Simulated engines on the cascade's strategies; largest_component as for salip.
    "simulated": ((*_COMMON, *_STRATEGY, *_CASCADE), {}),
}


class Method:
    """One row of the table: a method kind with its settings.

    Attributes:
        kind: the method kind's name (a key of :data:`salip.apps.bench.kinds.BENCH_METHODS`).
        spec: the method kind.
        name: the row label.
        config: the full settings (models included).
        options: the settings as given in the table (``extra`` ones included).
        extra: the kind's own settings as given (:attr:`MethodKind.extra_settings`).
        extra_info: ``extra`` checked, defaults filled in (JSON-ready; {} for kinds
            without extra settings).
        head_sha256: SHA-256 of the head.pt of learned-head kinds, else None.

    Raises:
        salip.core.errors.ConfigError: invalid ``extra`` settings.
    """

    def __init__(
        self,
        name: str,
        kind: MethodKind,
        config: SegmentConfig,
        options: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ):
        self.name, self.kind, self.spec = name, kind.name, kind
        self.config, self.options = config, dict(options)
        self.extra = dict(extra or {})
        self.extra_info = kind.check_extra(self.extra)
        self.head_sha256: str | None = None
        if kind.head_variant is not None:
            self.head_sha256 = _check_head(name, kind, config)

    @property
    def uses_ground_truth(self) -> bool:
        """Whether the method reads the reference masks (an oracle row)."""
        return self.spec.uses_ground_truth

    @property
    def needs_clip(self) -> bool:
        """Whether the method needs the CLIP model."""
        return self.spec.needs_clip

    @property
    def needs_sam(self) -> bool:
        """Whether the method needs the SAM model (else no model is loaded for it)."""
        return self.spec.needs_sam

    @property
    def needs_label_map(self) -> bool:
        """Whether the method reads the case's full reference label map."""
        return self.spec.needs_label_map

    def build(self, models: Models | None, case: CaseInput) -> Built:
        """The method's strategy for one case (see :func:`salip.api.factory.build`);
        ``models`` may be None when the method does not :attr:`needs_sam`."""
        return build(self.kind, models, self.config, case, extra=self.extra, kinds=BENCH_METHODS)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for run.json and the per-case fingerprints."""
        described = {
            "name": self.name,
            "method": self.kind,
            "uses_ground_truth": self.uses_ground_truth,
            "options": self.options,
            "config": dataclasses.asdict(self.config),
        }
        if self.head_sha256 is not None:
            described["head_sha256"] = self.head_sha256
        if self.extra_info:
            described["extra"] = self.extra_info
        return described


def _check_head(name: str, kind: MethodKind, config: SegmentConfig) -> str:
    """The SHA-256 of the method's head.pt, after checking its variant fits ``kind``.

    A missing head setting is refused by SegmentConfig's validation before this.
    """
    path = str(config.segmenter.head)
    try:
        manifest = read_head_manifest(path)
    except SalipError as exc:
        raise BenchmarkError(f"method '{name}' ({kind.name}): {exc}") from exc
    variant = manifest.get("variant")
    if variant != kind.head_variant:
        fits = next((k for k, m in BENCH_METHODS.items() if m.head_variant == variant), "?")
        raise BenchmarkError(
            f"method '{name}': {path} is a '{variant}' head, but method = "
            f"'{kind.name}' expects a '{kind.head_variant}' head; use method = '{fits}'."
        )
    return file_sha256(Path(path))


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
    if kind == "salip":  # the cascade's old name (see CHANGELOG.md)
        logger.warning('method \'%s\': method = "salip" is now method = "cascade".', name)
        kind = "cascade"
    if kind not in BENCH_METHODS:
        hint = did_you_mean(str(kind), BENCH_METHODS)
        raise BenchmarkError(
            f"method '{name}': unknown method {kind!r}.{hint} Valid methods: {', '.join(BENCH_METHODS)}."
        )
    allowed, defaults = SETTINGS[kind]
    spec = BENCH_METHODS[kind]
    options = {k: v for k, v in table.items() if k not in ("name", "method")}
    if allowed is None:
        allowed = tuple(f for f in flat_fields() if f not in (*_MODEL_FIELDS, *_SEGMENTER_FIELDS))
    allowed = (*allowed, *spec.extra_settings)
    bad = [key for key in options if key not in allowed]
    if bad:
        where = " (model settings belong in [models])" if set(bad) & set(_MODEL_FIELDS) else ""
        hint = did_you_mean(bad[0], allowed, cutoff=0.6)
        raise BenchmarkError(
            f"method '{name}' ({kind}): setting(s) {', '.join(bad)} not read by this "
            f"method{where}.{hint} Valid settings: {', '.join(sorted(allowed))}."
        )
    extra = {k: v for k, v in options.items() if k in spec.extra_settings}
    fields = {k: v for k, v in options.items() if k not in spec.extra_settings}
    try:
        config = SegmentConfig().replace(**models).replace(**{**defaults, **fields})
    except (SalipError, TypeError) as exc:
        raise BenchmarkError(f"method '{name}' ({kind}): {exc}") from exc
    try:  # Method checks the extra settings once, as it reads them
        return Method(name, spec, config, options, extra)
    except (ConfigError, TypeError) as exc:
        raise BenchmarkError(f"method '{name}' ({kind}): {exc}") from exc
