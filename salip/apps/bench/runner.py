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
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from salip.api.cluster import require_ray
from salip.api.executor import CaseRunner
from salip.api.factory import LazyModels
from salip.apps.bench.case_run import (
    CASE_COLUMNS,
    WORK_COLUMNS,
    CaseRun,
    compute_method,
    error_rows,
    full_rows,
    read_volume,
)
from salip.apps.bench.config import BenchmarkConfig, MetricSettings, load_config
from salip.apps.bench.datasets import DatasetCase, load_dataset
from salip.apps.bench.figures import write_figures
from salip.apps.bench.identity import device_info, model_identity, result_fingerprint, versions
from salip.apps.bench.methods import Method
from salip.apps.bench.report import summarize, summary_markdown
from salip.core.config import ClusterConfig
from salip.core.errors import BenchmarkError, ConfigError
from salip.core.toml_files import check_keys
from salip.io.writing import atomic_write, remove_temporaries, write_json
from salip.version import __version__

__all__ = [
    "CASE_COLUMNS",
    "WORK_COLUMNS",
    "BenchmarkResult",
    "load_config",
    "run_benchmark",
]

logger = logging.getLogger(__name__)


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


def _case_dir(out: Path, case: DatasetCase) -> Path:
    quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    return out / "cases" / quote(case.dataset) / quote(case.case_id)


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
    cases: list[DatasetCase] = []
    for table in cfg.datasets:
        cases += load_dataset(table, cfg.base_dir, limit=limit)
    needs_clip = any(m.needs_clip for m in cfg.methods)
    needs_sam = any(m.needs_sam for m in cfg.methods)
    identity = model_identity(cfg, needs_sam, needs_clip)
    plan = _plan(cfg, cases, identity, out_dir, rerun)
    jobs = [
        _CaseJob(
            case, [(m, path, key) for m, path, key, record in steps if record is None], out_dir
        )
        for case, steps in plan
    ]
    jobs = [job for job in jobs if job.steps]
    computed: dict[tuple[str, str], dict[str, Any]] = {}
    models = LazyModels(cfg.methods[0].config.models, clip=needs_clip)
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
        runner: CaseRunner[_CaseJob, list[dict]] = CaseRunner(
            setup=functools.partial(LazyModels, models.config, clip=needs_clip),
            compute=functools.partial(_compute_case, cfg.metrics),
            read=_read_job,
            failed=_lost_case,
            clean=_clean_job,
        )
        runner.run(jobs, cluster, finished, state=models)
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
    cfg: BenchmarkConfig, cases: list[DatasetCase], identity: dict[str, Any], out: Path, rerun: bool
) -> list[tuple[DatasetCase, list[tuple[Method, Path, str, dict[str, Any] | None]]]]:
    """Per case, per method: (method, record path, fingerprint, saved record to reuse)."""
    settings = dataclasses.asdict(cfg.metrics)
    plan = []
    for case in cases:
        folder, steps = _case_dir(out, case), []
        for method in cfg.methods:
            record_path = folder / f"{urllib.parse.quote(method.name, safe='')}.json"
            key = result_fingerprint(method, identity, case, settings)
            record = None if rerun else _read_record(record_path, key)
            steps.append((method, record_path, key, record))
        plan.append((case, steps))
    return plan


@dataclass
class _CaseJob:
    """One case's (method, record path, fingerprint) steps to compute, saved under ``out``."""

    case: DatasetCase
    steps: list[tuple[Method, Path, str]]
    out: Path

    def __str__(self) -> str:
        return self.case.key


def _compute_case(
    metrics: MetricSettings, models: LazyModels, job: _CaseJob, volume: Any = None
) -> list[dict]:
    """Compute and save every step of one case (the volume read once for them all)."""
    runner = CaseRun(job.case, models.load, metrics, volume)
    return [
        compute_method(runner, job.case, method, path, key, job.out)
        for method, path, key in job.steps
    ]


def _lost_case(job: _CaseJob, reason: str) -> list[dict]:
    """Error records of a case that raised, or whose Ray workers kept dying (saved, so a
    rerun retries)."""
    records = []
    for method, path, key in job.steps:
        rows = error_rows(job.case, BenchmarkError(reason))
        record = {
            "fingerprint": key,
            "status": "error",
            "rows": full_rows(job.case, method, rows, ""),
        }
        write_json(path, record)
        records.append(record)
    return records


def _clean_job(job: _CaseJob) -> None:
    """Remove what a killed worker left half-written for this case."""
    for _method, path, _key in job.steps:
        remove_temporaries(path)
        remove_temporaries(path.with_suffix(".npz"))


def _run_device(
    models: LazyModels, rows: list[dict[str, Any]], needs_sam: bool, engine: str
) -> str | None:
    """Where the results were computed, for run.json."""
    if models.loaded is not None:
        return models.loaded.device
    if not needs_sam:
        return "cpu"  # no method needs a model: everything ran on the CPU
    if engine == "ray":
        devices = sorted({str(r["device"]) for r in rows if r.get("device")})
        return ", ".join(f"ray: {d}" for d in devices) or None
    return None


def _read_job(job: _CaseJob) -> Any:
    """:func:`read_volume` of the job's case."""
    return read_volume(job.case)


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
        "versions": versions(),
        "hardware": device_info(device) if device else None,
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
