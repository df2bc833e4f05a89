"""``salip benchmark``: run methods over datasets and write the Dice table.

:func:`run_benchmark` reads a TOML config (:func:`load_config`), lists every dataset's cases,
loads the models once, and for each (case, method) segments the case, scores every organ
against its reference and saves the rows at once under ``<out>/cases/``. A rerun reuses every
saved result whose inputs are unchanged (the fingerprint of method settings, models, case
files and metric settings), so an interrupted run loses at most the case in flight; error
results are retried. At the end it writes ``cases.csv``, ``summary.csv``, ``summary.md``,
``figures/`` and ``run.json`` (see ``benchmarks/README.md``).

Masks are compared in the image file's own grid; distances use the file's voxel sizes in mm
(2D images: pixels). ``wall_s`` is the time to segment one case with one method, models
loaded and the file read; ``peak_gpu_mb`` the peak CUDA memory allocated meanwhile;
``strategy`` and the work counts (``encoded_slices``, ``proposal_slices``, ``box_prompts``)
come from the run report's ``strategy`` entry, empty where the strategy gives none;
``confidence`` is the organ's in the run report (empty where the method gives none; an
organ answered "not found" has ``pred_voxels`` 0).

Models are loaded only when a method needs them (:attr:`Method.needs_sam`): a config of
``simulated`` rows runs without checkpoints. Methods that read the full label map
(:attr:`Method.needs_label_map`) get it from :func:`salip.apps.bench.datasets.load_label_map`, in
salip's canonical layout; a dataset kind without one makes their cases error rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import platform
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from salip.api.cluster import RayPool, require_ray
from salip.api.factory import CaseInput, Models, load_models
from salip.api.pipeline import segment
from salip.apps.bench import metrics
from salip.apps.bench.datasets import Case, load_dataset, load_label_map, load_references
from salip.apps.bench.devtime import hardware, peak_mb, reset_peak, sync
from salip.apps.bench.methods import Method, make_method
from salip.apps.bench.report import summarize, summary_markdown, write_figures
from salip.core.config import ClusterConfig, check_keys, read_toml
from salip.core.errors import BenchmarkError, ConfigError, SalipError
from salip.core.hashing import file_sha256, fingerprint
from salip.core.organs import get_organ
from salip.core.prefetch import prefetch
from salip.io import read_input, to_canonical
from salip.io.orientation import slices_with_most, source_slice_indices
from salip.io.slicing import AXES, choose_intensity, display_slice, to_uint8
from salip.io.writing import atomic_write, remove_temporaries, write_json
from salip.models.sam import resolve_sam_checkpoint
from salip.models.specs import local_dir, resolve_model_paths
from salip.version import __version__

logger = logging.getLogger(__name__)

#: Top-level tables of a benchmark config.
CONFIG_KEYS = ("models", "metrics", "methods", "datasets")

#: Columns of cases.csv, in order.
CASE_COLUMNS = (
    "dataset",
    "case",
    "organ",
    "method",
    "method_kind",
    "uses_ground_truth",
    "status",
    "error",
    "dice",
    "dice_status",
    "slice_dice",
    "gt_slices",
    "nsd",
    "hd95",
    "pred_voxels",
    "gt_voxels",
    "confidence",
    "spacing",
    "approximate",
    "wall_s",
    "peak_gpu_mb",
    "device",
    "strategy",
    "encoded_slices",
    "proposal_slices",
    "box_prompts",
    "montage",
)

#: Work counts of the run report's ``strategy.counts`` copied to cases.csv.
WORK_COLUMNS = ("encoded_slices", "proposal_slices", "box_prompts")

_PACKAGES = (
    "torch",
    "torchvision",
    "segment-anything",
    "open_clip_torch",
    "numpy",
    "scipy",
    "nibabel",
    "pydicom",
    "scikit-image",
    "pandas",
    "matplotlib",
)


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


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` returns.

    Attributes:
        out: the output folder.
        summary_md: the Markdown summary.
        files: every output file written at the end (tables, figures, run.json).
        computed: (case, method) results computed in this run.
        reused: results reused from an earlier run.
        errors: error rows in cases.csv.
    """

    out: Path
    summary_md: Path
    files: list[Path]
    computed: int
    reused: int
    errors: int


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
    raw = read_toml(path, "config", BenchmarkError)
    check_keys(f"config {path.name}", list(raw), CONFIG_KEYS, BenchmarkError)
    for key in ("models", "metrics"):
        if not isinstance(raw.get(key, {}), dict):
            raise BenchmarkError(f"config {path.name}: [{key}] must be a table.")
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


# --------------------------------------------------------------------------- identities


def _model_identity(config: BenchmarkConfig, needs_sam: bool, needs_clip: bool) -> dict[str, Any]:
    """Model settings with checkpoint SHA-256s; fails early when a checkpoint is missing.
    {} when no method needs a model."""
    if not needs_sam:
        return {}
    m = config.methods[0].config.models
    sam_path = Path(resolve_sam_checkpoint(m.sam_checkpoint))
    identity: dict[str, Any] = {
        "sam": {
            "checkpoint": m.sam_checkpoint,
            "path": str(sam_path),
            "sha256": file_sha256(sam_path),
        }
    }
    if needs_clip:
        clip: dict[str, Any] = {"model": m.clip_model, "pretrained": m.clip_pretrained}
        weights: list[Path] = []
        folder = local_dir(m.clip_model)
        if folder is not None:
            weights = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
        elif m.clip_pretrained and Path(m.clip_pretrained).is_file():
            weights = [Path(m.clip_pretrained)]
        # A named open_clip tag pins its weights; the open_clip version is in run.json.
        clip["sha256"] = {p.name: file_sha256(p) for p in weights}
        identity["clip"] = clip
    return identity


def _versions() -> dict[str, str]:
    versions = {"salip": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "platform": platform.platform()}
    machine = hardware(device)
    if device.startswith("cuda"):
        info["gpu"] = machine["gpu"]
        info["cuda"] = torch.version.cuda
    else:
        info["cpu_threads"] = machine["cpu_threads"]
    return info


def _load_models(config: BenchmarkConfig, needs_clip: bool) -> Models:
    start = time.perf_counter()
    models = load_models(config.methods[0].config.models, clip=needs_clip)
    logger.info("models loaded on %s in %.1f s", models.device, time.perf_counter() - start)
    return models


# --------------------------------------------------------------------------- one case


def _case_dir(out: Path, case: Case) -> Path:
    quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    return out / "cases" / quote(case.dataset) / quote(case.case_id)


def _case_identity(case: Case) -> dict[str, Any]:
    return {
        "image": str(case.image),
        "organs": list(case.organs),
        "channel": case.channel,
        "label": str(case.label) if case.label else None,
        "values": {k: list(v) for k, v in case.values.items()},
        "files": {k: [str(p) for p in v] for k, v in case.files.items()},
        "threshold": case.threshold,
        "fill_outline": case.fill_outline,
    }


def _label_map_identity(case: Case) -> dict[str, Any]:
    """What the full label map of a case is read from (for methods that read it)."""
    return {
        "label_names": {str(k): v for k, v in sorted(case.label_names.items())},
        "label_dir": str(case.label_dir) if case.label_dir else None,
        "organ_map": dict(sorted(case.organ_map.items())),
    }


def _fingerprint(
    method: Method, identity: dict[str, Any], case: Case, settings: dict[str, Any]
) -> str:
    """The key of one saved result: method, models (if it uses any), case files, metrics."""
    parts = [method.describe(), identity if method.needs_sam else {}, _case_identity(case)]
    if method.needs_label_map:
        parts.append(_label_map_identity(case))
    return fingerprint([*parts, settings])


def _work(report: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy's name and work counts from a run report (None where absent)."""
    strategy = report.get("strategy") or {}
    counts = strategy.get("counts") or {}
    return {"strategy": strategy.get("name"), **{key: counts.get(key) for key in WORK_COLUMNS}}


def _spacing(geometry: Any, ndim: int) -> tuple[float, ...]:
    """Voxel sizes in mm along the file's array axes (1.0 per axis for 2D images)."""
    if geometry.kind == "image":
        return (1.0,) * ndim
    return tuple(float(s) for s in nib.affines.voxel_sizes(geometry.affine)[:ndim])


def _score(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], slice_axis: int | None, tol: float
) -> dict[str, Any]:
    dice = metrics.dice_case(pred, gt)
    if slice_axis is None:  # a 2D image is its own single slice
        slice_dice, gt_slices = (dice.dice, 1) if gt.any() else (None, 0)
    else:
        slice_dice, gt_slices = metrics.slice_dice(pred, gt, slice_axis)
    return {
        "dice": dice.dice,
        "dice_status": dice.status,
        "slice_dice": slice_dice,
        "gt_slices": gt_slices,
        "nsd": metrics.nsd(pred, gt, spacing, tol),
        "hd95": metrics.hd95(pred, gt, spacing),
        "pred_voxels": int(np.count_nonzero(pred)),
        "gt_voxels": int(np.count_nonzero(gt)),
    }


def _montage_slices(
    volume: Any, volume8: np.ndarray, axis: str, pred: np.ndarray, gt: np.ndarray
) -> dict[str, Any]:
    """The display slice with the most reference (else prediction) of one organ."""
    if volume.is_2d:
        index = 0
        gt_c, pred_c = gt, pred
    else:
        gt_c, pred_c = to_canonical(gt, volume.geometry), to_canonical(pred, volume.geometry)
        shown = gt_c if gt_c.any() else pred_c
        count = gt_c.shape[AXES[axis]]
        index = slices_with_most(shown, axis, 1)[0] if shown.any() else count // 2
    image = display_slice(volume8, volume.is_2d, axis, index)
    if image.ndim == 3:
        image = (
            image[..., :3].mean(axis=2).astype(np.uint8) if image.shape[2] > 1 else image[..., 0]
        )
    return {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "gt": np.ascontiguousarray(display_slice(gt_c, volume.is_2d, axis, index), dtype=bool),
        "pred": np.ascontiguousarray(display_slice(pred_c, volume.is_2d, axis, index), dtype=bool),
        "index": np.int64(index),
    }


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write(path, write)


class _CaseRun:
    """One case: the volume is read once and references once, for every method."""

    def __init__(
        self, case: Case, models_fn: Any, metrics: MetricSettings, volume: Any = None
    ) -> None:
        self.case, self.models_fn, self.metrics = case, models_fn, metrics
        # A volume read ahead (see run_benchmark), or the exception reading it raised.
        self._volume: Any = volume
        self._references: dict[str, np.ndarray] | None = None
        self._label_map: tuple[np.ndarray, dict[int, str]] | None = None
        self._volume8: dict[tuple[Any, ...], np.ndarray] = {}

    def volume(self) -> Any:
        if self._volume is None:
            self._volume = _read_volume(self.case)
        if isinstance(self._volume, Exception):
            raise self._volume
        return self._volume

    def volume8(self, intensity: Any, slicing: Any) -> np.ndarray:
        """The 8-bit volume for the montage, made once per intensity mapping."""
        key = (intensity, slicing.percentile_low, slicing.percentile_high)
        if key not in self._volume8:
            self._volume8[key] = to_uint8(self.volume(), intensity, slicing)
        return self._volume8[key]

    def references(self) -> dict[str, np.ndarray]:
        """Reference masks in the image file's grid, read once per case."""
        if self._references is None:
            self._references = load_references(self.case)
        return self._references

    def label_map(self) -> tuple[np.ndarray, dict[int, str]]:
        """The full reference label map (image file's grid) and its names, read once."""
        if self._label_map is None:
            self._label_map = load_label_map(self.case)
        return self._label_map

    def case_input(self, method: Method, organs: tuple[Any, ...], modality: str) -> CaseInput:
        """What ``method`` learns of the case: references only for oracle rows, the full
        label map only for methods that read it, both in canonical layout."""
        geometry, given, full = self.volume().geometry, None, None
        if method.uses_ground_truth:  # only oracle rows ever see the references
            given = {name: to_canonical(ref, geometry) for name, ref in self.references().items()}
        if method.needs_label_map:
            labels, names = self.label_map()
            full = (to_canonical(labels, geometry), names)
        volume = self.volume()
        return CaseInput(organs, modality, volume.is_2d, given, full, volume.spacing)

    def run(self, method: Method) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Segment and score the case with ``method``: (rows, montage arrays)."""
        case, volume = self.case, self.volume()
        models: Models | None = self.models_fn() if method.needs_sam else None
        device = models.device if models is not None else "cpu"
        organs = tuple(get_organ(o) for o in case.organs)
        config = method.config
        if case.modality and config.slicing.modality == "auto":
            config = config.replace(modality=case.modality)
        intensity = choose_intensity(volume, list(organs), config.slicing)
        given = self.case_input(method, organs, intensity.modality)
        reset_peak(device)
        start = time.perf_counter()
        built = method.build(models, given)
        result = segment(
            volume, organs=list(case.organs), write=False, config=config, segmenter=built.strategy
        )
        sync(device)
        wall = time.perf_counter() - start
        peak = peak_mb(device)
        work = _work(result.report)
        references = self.references()
        volume8 = self.volume8(intensity, config.slicing)
        axis = config.slicing.axis
        rows, montage = [], {}
        for organ in case.organs:
            pred = result.masks[organ].astype(bool)
            gt = references[organ]
            if pred.shape != gt.shape:
                raise BenchmarkError(
                    f"case {case.key}: prediction {pred.shape} and reference {gt.shape} differ "
                    "in shape."
                )
            spacing = _spacing(volume.geometry, gt.ndim)
            slice_axis = None if volume.is_2d else source_slice_indices(volume, axis, [])[0]
            scores = _score(pred, gt, spacing, slice_axis, self.metrics.nsd_tolerance_mm)
            rows.append(
                {
                    **scores,
                    "confidence": result.report["organs"][organ]["confidence"],
                    "organ": organ,
                    "spacing": ",".join(f"{s:g}" for s in spacing),
                    "wall_s": round(wall, 4),
                    "peak_gpu_mb": None if peak is None else round(peak, 1),
                    "device": device,
                    **work,
                }
            )
            for key, value in _montage_slices(volume, volume8, axis, pred, gt).items():
                montage[f"{organ}__{key}"] = value
        return rows, montage


def _base_row(case: Case, method: Method) -> dict[str, Any]:
    return {
        "dataset": case.dataset,
        "case": case.case_id,
        "method": method.name,
        "method_kind": method.kind,
        "uses_ground_truth": method.uses_ground_truth,
    }


def _error_rows(case: Case, exc: BaseException) -> list[dict[str, Any]]:
    reason = str(exc) if isinstance(exc, SalipError) else f"{type(exc).__name__}: {exc}"
    return [
        {
            "organ": organ,
            "status": "error",
            "error": reason,
            "approximate": case.approximate.get(organ, ""),
        }
        for organ in case.organs
    ]


def _full_rows(case: Case, method: Method, rows: list[dict[str, Any]], montage: str) -> list[dict]:
    full = []
    for row in rows:
        merged = {c: None for c in CASE_COLUMNS}
        merged.update(_base_row(case, method))
        merged.update({"status": "ok", "error": "", "montage": montage})
        merged["approximate"] = case.approximate.get(row["organ"], "")
        merged.update(row)
        full.append(merged)
    return full


# --------------------------------------------------------------------------- the run


def run_benchmark(
    config: str | Path | BenchmarkConfig,
    *,
    out: str | Path | None = None,
    limit: int | None = None,
    rerun: bool = False,
    progress: bool = False,
    **cluster_options: Any,
) -> BenchmarkResult:
    """Run a benchmark config and write its outputs.

    Args:
        config: the TOML file (or a parsed :class:`BenchmarkConfig`).
        out: output folder; default ``benchmark-results/<config stem>`` in the working folder.
        limit: at most this many cases per dataset (the first by case id).
        rerun: recompute every case, ignoring saved results.
        progress: show a progress bar over (case, method) pairs.
        cluster_options: fields of :class:`~salip.core.config.ClusterConfig`, e.g.
            ``engine="ray", workers=2``: each Ray worker loads the models once and computes
            whole cases (every method of a case), writing their results under ``<out>``.

    Returns:
        A :class:`BenchmarkResult`.

    Raises:
        BenchmarkError: a bad config or dataset (before any model runs).
        salip.core.errors.ConfigError: bad cluster options, or Ray missing.
        salip.core.errors.ModelError: a missing or unreadable checkpoint.
    """
    cluster = _cluster(cluster_options)
    cfg = config if isinstance(config, BenchmarkConfig) else load_config(config)
    out_dir = Path(out) if out is not None else Path.cwd() / "benchmark-results" / cfg.path.stem
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchmarkError(f"--out {out_dir} is a file; give a folder.")
    started = time.perf_counter()
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    cases: list[Case] = []
    for table in cfg.datasets:
        cases += load_dataset(table, cfg.base_dir, limit=limit)
    needs_clip = any(m.needs_clip for m in cfg.methods)
    needs_sam = any(m.needs_sam for m in cfg.methods)
    identity = _model_identity(cfg, needs_sam, needs_clip)
    plan = _plan(cfg, cases, identity, out_dir, rerun)
    jobs = [
        _CaseJob(
            case, [(m, path, key) for m, path, key, record in steps if record is None], out_dir
        )
        for case, steps in plan
    ]
    jobs = [job for job in jobs if job.steps]
    computed: dict[tuple[str, str], dict[str, Any]] = {}
    models = _ModelsOnce(cfg, needs_clip)
    total = len(cases) * len(cfg.methods)
    with tqdm(total=total, desc="benchmark", unit="run", disable=not progress) as bar:
        bar.update(total - sum(len(job.steps) for job in jobs))

        def finished(position: int, records: list[dict[str, Any]]) -> None:
            job = jobs[position]
            for (method, _path, _key), record in zip(job.steps, records):
                computed[(job.case.key, method.name)] = record
            bar.update(len(records))

        for job in jobs:  # what a killed run left half-written
            _clean_job(job)
        if cluster.engine == "ray" and jobs:
            setup = functools.partial(_ModelsOnce, cfg, needs_clip)
            pool = RayPool(setup, _compute_case, _lost_case, on_death=_clean_job, label=str)
            pool.run(jobs, cluster, finished)
        else:
            _run_local(models, jobs, finished)
    all_rows: list[dict[str, Any]] = []
    for case, steps in plan:
        for method, _path, _key, record in steps:
            all_rows += (record or computed[(case.key, method.name)])["rows"]
    device = _run_device(models, all_rows, needs_sam, cluster.engine)
    files = _write_outputs(
        out_dir,
        cfg,
        all_rows,
        identity,
        device,
        date,
        len(computed),
        total - len(computed),
        started,
    )
    errors = sum(1 for row in all_rows if row["status"] == "error")
    if errors:
        logger.warning("%d error row(s); see the `error` column of cases.csv", errors)
    return BenchmarkResult(
        out_dir, out_dir / "summary.md", files, len(computed), total - len(computed), errors
    )


def _cluster(options: Mapping[str, Any]) -> ClusterConfig:
    """The cluster options as a checked :class:`ClusterConfig` (Ray imported if asked)."""
    valid = [f.name for f in dataclasses.fields(ClusterConfig)]
    check_keys("run_benchmark", list(options), valid, ConfigError)
    cluster = ClusterConfig(**options)
    cluster.validate()
    if cluster.engine == "ray":
        require_ray()
    return cluster


def _plan(
    cfg: BenchmarkConfig, cases: list[Case], identity: dict[str, Any], out: Path, rerun: bool
) -> list[tuple[Case, list[tuple[Method, Path, str, dict[str, Any] | None]]]]:
    """Per case, per method: (method, record path, fingerprint, saved record to reuse)."""
    settings = dataclasses.asdict(cfg.metrics)
    plan = []
    for case in cases:
        folder, steps = _case_dir(out, case), []
        for method in cfg.methods:
            record_path = folder / f"{urllib.parse.quote(method.name, safe='')}.json"
            key = _fingerprint(method, identity, case, settings)
            record = None if rerun else _read_record(record_path, key)
            steps.append((method, record_path, key, record))
        plan.append((case, steps))
    return plan


@dataclass
class _CaseJob:
    """One case's (method, record path, fingerprint) steps to compute, saved under ``out``."""

    case: Case
    steps: list[tuple[Method, Path, str]]
    out: Path

    def __str__(self) -> str:
        return self.case.key


class _ModelsOnce:
    """The benchmark's models, loaded on first need (in each Ray worker: its state)."""

    def __init__(self, cfg: BenchmarkConfig, needs_clip: bool) -> None:
        self.cfg, self.needs_clip = cfg, needs_clip
        self.models: Models | None = None

    def load(self) -> Models:
        if self.models is None:
            self.models = _load_models(self.cfg, self.needs_clip)
        return self.models


def _compute_case(models: _ModelsOnce, job: _CaseJob, volume: Any = None) -> list[dict]:
    """Compute and save every step of one case (the volume read once for them all)."""
    runner = _CaseRun(job.case, models.load, models.cfg.metrics, volume)
    return [
        _compute(runner, job.case, method, path, key, job.out) for method, path, key in job.steps
    ]


def _lost_case(job: _CaseJob, reason: str) -> list[dict]:
    """Error records of a case whose Ray workers kept dying (saved, so a rerun retries)."""
    records = []
    for method, path, key in job.steps:
        rows = _error_rows(job.case, BenchmarkError(reason))
        record = {
            "fingerprint": key,
            "status": "error",
            "rows": _full_rows(job.case, method, rows, ""),
        }
        write_json(path, record)
        records.append(record)
    return records


def _clean_job(job: _CaseJob) -> None:
    """Remove what a killed worker left half-written for this case."""
    for _method, path, _key in job.steps:
        remove_temporaries(path)
        remove_temporaries(path.with_suffix(".npz"))


def _run_local(models: _ModelsOnce, jobs: list[_CaseJob], finished: Any) -> None:
    """Compute the cases in this process; the next case's image is read in a background
    thread while this one runs."""
    volumes = prefetch([job.case for job in jobs], _read_volume, depth=1)
    for position, (job, volume) in enumerate(zip(jobs, volumes)):
        finished(position, _compute_case(models, job, volume))
        del volume


def _run_device(
    models: _ModelsOnce, rows: list[dict[str, Any]], needs_sam: bool, engine: str
) -> str | None:
    """Where the results were computed, for run.json."""
    if models.models is not None:
        return models.models.device
    if not needs_sam:
        return "cpu"  # no method needs a model: everything ran on the CPU
    if engine == "ray":
        devices = sorted({str(r["device"]) for r in rows if r.get("device")})
        return ", ".join(f"ray: {d}" for d in devices) or None
    return None


def _read_volume(case: Case) -> Any:
    """The case's image as a Volume, or the exception reading it raised (kept for the case's
    error rows rather than raised in the prefetch thread)."""
    try:
        return read_input(case.image, channel=case.channel)
    except Exception as exc:  # noqa: BLE001 - reported per case by _compute
        return exc


def _read_record(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A saved result to reuse, or None (missing, unreadable, stale or an error)."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("%s: unreadable saved result; recomputing", path)
        return None
    if record.get("fingerprint") != fingerprint:
        logger.info("%s: settings, models or files changed; recomputing", path)
        return None
    if record.get("status") != "ok":
        return None  # errors are retried
    return record


def _compute(
    runner: _CaseRun, case: Case, method: Method, path: Path, fingerprint: str, out: Path
) -> dict[str, Any]:
    montage_rel = ""
    try:
        rows, montage = runner.run(method)
        if montage:
            montage_path = path.with_suffix(".npz")
            _save_npz(montage_path, montage)
            montage_rel = montage_path.relative_to(out).as_posix()
        status = "ok"
    except Exception as exc:  # noqa: BLE001
        # One bad case (unreadable file, shape mismatch, out of memory) must not end a run
        # of hundreds: it becomes error rows with the reason. Unexpected exception types
        # may be bugs, so their traceback is logged.
        expected = isinstance(exc, SalipError)
        logger.warning("%s with %s failed: %s", case.key, method.name, exc, exc_info=not expected)
        rows, status = _error_rows(case, exc), "error"
    record = {
        "fingerprint": fingerprint,
        "status": status,
        "rows": _full_rows(case, method, rows, montage_rel),
    }
    write_json(path, record)
    return record


def _write_outputs(
    out: Path,
    cfg: BenchmarkConfig,
    rows: list[dict[str, Any]],
    identity: dict[str, Any],
    device: str | None,
    date: str,
    computed: int,
    reused: int,
    started: float,
) -> list[Path]:
    from salip.io.writing import atomic_write, write_json

    cases = pd.DataFrame(rows, columns=list(CASE_COLUMNS))
    for column in WORK_COLUMNS:  # whole numbers, empty where absent (not 12.0)
        cases[column] = pd.to_numeric(cases[column], errors="coerce").astype("Int64")
    m = cfg.metrics
    summary = summarize(
        cases, n_resamples=m.bootstrap_resamples, confidence=m.confidence, seed=m.seed
    )
    run_info = {
        "config": str(cfg.path),
        "date": date,
        "device": device or "not loaded (every result reused)",
        "salip_version": __version__,
        "sam": identity.get("sam", {}).get("checkpoint"),
        "clip": identity.get("clip", {}).get("model"),
        "confidence": m.confidence,
    }
    files = [out / "cases.csv", out / "summary.csv", out / "summary.md"]
    atomic_write(files[0], lambda tmp: cases.to_csv(tmp, index=False))
    atomic_write(files[1], lambda tmp: summary.to_csv(tmp, index=False))
    markdown = summary_markdown(summary, run_info)
    atomic_write(files[2], lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    files += write_figures(cases, out, worst=m.worst_cases)
    run_json = {
        **run_info,
        "config_file": cfg.raw,
        "models": identity,
        "methods": [method.describe() for method in cfg.methods],
        "versions": _versions(),
        "hardware": _device_info(device) if device else None,
        "results": {
            "computed": computed,
            "reused": reused,
            "rows": len(rows),
            "error_rows": int((cases["status"] == "error").sum()) if len(cases) else 0,
        },
        "wall_s": round(time.perf_counter() - started, 2),
    }
    write_json(out / "run.json", run_json)
    files.append(out / "run.json")
    return files
