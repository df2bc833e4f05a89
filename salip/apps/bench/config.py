"""The benchmark's TOML config: ``[models]``, ``[metrics]``, ``[[methods]]`` and
``[[datasets]]`` (see ``benchmarks/README.md``), read and checked before anything runs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salip.apps.bench.methods import Method, make_method
from salip.core.errors import BenchmarkError
from salip.core.toml_files import check_keys, read_config
from salip.models.specs import resolve_model_paths

__all__ = ["CONFIG_KEYS", "BenchmarkConfig", "MetricSettings", "load_config", "resolve_models"]

#: Top-level tables of a benchmark config.
CONFIG_KEYS = ("models", "metrics", "methods", "datasets")


@dataclass(frozen=True)
class MetricSettings:
    """The ``[metrics]`` table.

    Attributes:
        nsd_tolerance_mm: NSD tolerance in mm (pixels for 2D images).
        bootstrap_resamples: resamples of the bootstrap confidence intervals.
        confidence: coverage of the confidence intervals.
        seed: seed of the bootstrap.
        worst_cases: cases per method in the worst-case montage.
    """

    nsd_tolerance_mm: float = 2.0
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    worst_cases: int = 6


@dataclass
class BenchmarkConfig:
    """A parsed benchmark config.

    Attributes:
        path: the TOML file.
        models: ``[models]`` settings (model config field names; relative paths resolved).
        metrics: the ``[metrics]`` settings.
        methods: the rows, in order.
        datasets: the ``[[datasets]]`` tables as given.
        raw: the whole file as parsed, for run.json.
    """

    path: Path
    models: dict[str, Any]
    metrics: MetricSettings
    methods: list[Method]
    datasets: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative paths resolve against it."""
        return self.path.parent


def resolve_models(table: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """``[models]`` with relative checkpoint paths made absolute against ``base_dir``."""
    return resolve_model_paths(table, base_dir, BenchmarkError)


def _resolve_head(table: Any, base_dir: Path) -> Any:
    """A ``[[methods]]`` table with a relative ``head`` path made absolute."""
    if isinstance(table, Mapping) and isinstance(table.get("head"), str):
        head = Path(table["head"])
        if not head.is_absolute():
            return {**table, "head": os.path.normpath(base_dir / head)}
    return table


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and check a benchmark TOML config (see ``benchmarks/README.md``).

    Raises:
        BenchmarkError: a missing or malformed file, unknown keys, no method or dataset,
            repeated names, or a method whose settings are invalid.
    """
    path = Path(path).absolute()
    raw = read_config(path, "config", CONFIG_KEYS, ("models", "metrics"), BenchmarkError)
    for key in ("methods", "datasets"):
        items = raw.get(key)
        if not isinstance(items, list) or not items:
            raise BenchmarkError(
                f"config {path.name}: needs at least one [[{key}]] table; see "
                "benchmarks/configs/ for examples."
            )
    models = resolve_models(raw.get("models", {}), path.parent)
    metrics_table = raw.get("metrics", {})
    check_keys(
        "[metrics]",
        list(metrics_table),
        [f.name for f in dataclasses.fields(MetricSettings)],
        BenchmarkError,
    )
    metrics = MetricSettings(**metrics_table)
    checks = [
        (
            isinstance(metrics.nsd_tolerance_mm, int | float) and metrics.nsd_tolerance_mm >= 0,
            "nsd_tolerance_mm must be a distance >= 0",
        ),
        (
            isinstance(metrics.bootstrap_resamples, int) and metrics.bootstrap_resamples >= 1,
            "bootstrap_resamples must be a whole number >= 1",
        ),
        (
            isinstance(metrics.confidence, float) and 0 < metrics.confidence < 1,
            "confidence must be between 0 and 1, e.g. 0.95",
        ),
        (isinstance(metrics.seed, int), "seed must be a whole number"),
        (
            isinstance(metrics.worst_cases, int) and metrics.worst_cases >= 1,
            "worst_cases must be a whole number >= 1",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise BenchmarkError(f"[metrics]: {message}.")
    methods = [make_method(_resolve_head(t, path.parent), models) for t in raw["methods"]]
    names = [m.name for m in methods]
    dataset_names = [d.get("name") if isinstance(d, dict) else None for d in raw["datasets"]]
    for what, values in (("method", names), ("dataset", dataset_names)):
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise BenchmarkError(
                f"{what} name(s) repeat: {', '.join(repeated)}; names must differ."
            )
    return BenchmarkConfig(path, models, metrics, methods, list(raw["datasets"]), raw)
