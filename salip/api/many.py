"""``salip.segment_many``: a cohort of scans in one run, models loaded once.

Each input is a file (NIfTI, 2D image), a DICOM folder or .zip, a folder to search, or a
glob (:func:`~salip.api.cases.find_cases`); a jobs file gives each case its own organs,
output and settings (:func:`~salip.api.jobs.read_jobs`). Every case is written into one
output folder with the files of a single run; a case that fails is recorded with its
one-line reason and the run goes on.

A case whose outputs are already there is skipped only when its sidecar says they are this
case's result (same input path and content, series, organs and settings;
:mod:`salip.api.provenance`); otherwise it fails with the reason, and ``overwrite``
recomputes it. Runs may write into one folder at the same time: a case is computed under a
lock (:mod:`salip.io.locks`), so one run writes it and the other records it as skipped, and
without ``overwrite`` no file is ever replaced. ``run.csv`` in the folder is a ledger of
every case run into it (:mod:`salip.api.ledger`).

Cases run through the case runner (:mod:`salip.api.executor`): in this process
(``engine="local"``: the next case is read in a background thread while one runs) or on Ray
workers (``engine="ray"``), which write their cases into the same folder.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salip.api.cases import CasePaths, CaseSource, find_cases, plan_outputs
from salip.api.cluster import require_ray
from salip.api.executor import CaseRunner
from salip.api.factory import LazyModels
from salip.api.jobs import read_jobs
from salip.api.ledger import (
    RUN_TABLE,
    CaseRow,
    carry_over,
    entry,
    now,
    read_table,
    write_table,
)
from salip.api.pipeline import OutputRequest, SegmentationResult, segment_case
from salip.api.provenance import mismatch, read_sidecar
from salip.core.config import ClusterConfig, SegmentConfig
from salip.core.errors import ConfigError, InputError, SalipError, one_line
from salip.core.organs import parse_organs
from salip.io import Volume, read_input
from salip.io.locks import case_lock
from salip.io.writing import os_problem, remove_temporaries

__all__ = ["RUN_TABLE", "CaseRow", "segment_many"]

logger = logging.getLogger(__name__)

_CLUSTER_FIELDS = tuple(f.name for f in dataclasses.fields(ClusterConfig))


@dataclass(frozen=True)
class _Task:
    """One case to compute: where it comes from, where it goes, and how.

    Attributes:
        earlier: the case's row in the folder's ledger before this run, if any.
    """

    source: CaseSource
    paths: CasePaths
    organs: tuple[str, ...]
    config: SegmentConfig
    overwrite: bool
    folder: Path
    earlier: Mapping[str, str] | None = None


def segment_many(
    inputs: Sequence[str | Path] = (),
    *,
    output: str | Path,
    organs: str | Sequence[str] | None = None,
    jobs: str | Path | None = None,
    overwrite: bool = False,
    preview: bool = False,
    report: bool = False,
    config: SegmentConfig | None = None,
    progress: bool = False,
    **options: Any,
) -> list[CaseRow]:
    """Segment ``organs`` in every case of ``inputs`` (and ``jobs``), loading the models once
    per worker.

    Args:
        inputs: files, DICOM folders or zips, folders to search, or globs
            (see :func:`~salip.api.cases.find_cases`). A DICOM folder holding several
            series gives one case per series.
        output: the output folder (created if needed; never searched for inputs). Case
            ``NAME`` (its input's path relative to the folder holding every input,
            flattened: :func:`~salip.api.cases.case_names`) writes ``NAME.nii.gz``
            (``.png`` for 2D images) with its ``NAME.json`` sidecar, and with
            ``preview``/``report`` ``NAME.preview.png`` and ``NAME.report.json``;
            ``run.csv`` is the folder's ledger of every case.
        organs: as for :func:`salip.segment`; the default of jobs rows without organs.
        jobs: a jobs file (CSV or JSON Lines; see :func:`~salip.api.jobs.read_jobs`),
            whose cases follow those of ``inputs``.
        overwrite: recompute cases whose outputs exist (default: skip them when their
            sidecar says they are the case's result, else record the case as failed).
        preview: also write each case's preview.
        report: also write each case's report.
        config: settings; ``options`` apply on top (same names as :func:`salip.segment`),
            and also take the fields of :class:`~salip.core.config.ClusterConfig`
            (``engine="ray"``, ``ray_address``, ``workers``, ``gpus_per_worker``,
            ``cpus_per_worker``, ``max_retries``).
        progress: show a progress bar over cases.

    Returns:
        One :class:`CaseRow` per case, in order. A failed case has status "failed" and
        leaves no file; the others are not affected.

    Raises:
        SalipError: bad settings, organs or jobs file, an input that does not exist, or an
            output folder that cannot be made; before any case runs.
    """
    from tqdm.auto import tqdm

    cluster = ClusterConfig(**{k: options.pop(k) for k in _CLUSTER_FIELDS if k in options})
    cluster.validate()
    if cluster.engine == "ray":
        require_ray()
    cfg = (config or SegmentConfig()).replace(**options)
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder for the outputs of several cases.")
    cases, run_organs = _gather(inputs, jobs, organs, cfg.scoring.prompts_dir, folder)
    plans = plan_outputs(cases, folder, preview=preview, report=report)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder {folder}: {os_problem(exc)}.") from exc
    _, earlier = read_table(folder)
    rows: dict[int, CaseRow] = {}
    todo: list[tuple[int, _Task]] = []
    for index, (case, paths) in enumerate(zip(cases, plans)):
        task = _Task(
            case, paths, case.organs or run_organs, _case_config(cfg, case), overwrite, folder,
            earlier.get(paths.name),
        )  # fmt: skip
        decided = None if overwrite or not paths.complete() else _existing(task)
        if decided is not None:
            rows[index] = decided
        else:
            todo.append((index, task))
    with tqdm(total=len(cases), desc="cases", unit="case", disable=not progress) as bar:
        bar.update(len(rows))

        def finished(position: int, row: CaseRow) -> None:
            rows[todo[position][0]] = row
            write_table(folder, [rows[i] for i in sorted(rows)])
            bar.update(1)

        write_table(folder, [rows[i] for i in sorted(rows)])
        _RUNNER.run([task for _, task in todo], cluster, finished)
    ordered = [rows[i] for i in sorted(rows)]
    failed = sum(r.status == "failed" for r in ordered)
    logger.debug("%d case(s): %d failed; table in %s", len(ordered), failed, folder / RUN_TABLE)
    return ordered


def _case_config(config: SegmentConfig, case: CaseSource) -> SegmentConfig:
    """The run's settings with the case's own: its series, and a jobs row's settings."""
    options = dict(case.options)
    if case.series is not None:
        options["series"] = case.series
    return config.replace(**options) if options else config


def _row(task: _Task, status: str, error: str = "", **values: Any) -> CaseRow:
    """A ledger row of ``task`` with this run's history entry."""
    return CaseRow(
        task.source.path, task.paths.name, status, error, series=_series(task),
        entry=entry(status), **values,
    )  # fmt: skip


def _existing(task: _Task) -> CaseRow:
    """The row of a case whose outputs are all there: skipped when its sidecar says they
    are this case's result, else failed with the reason (nothing is recomputed or
    replaced without ``overwrite``)."""
    sidecar = read_sidecar(task.paths.sidecar())
    try:
        reason = mismatch(sidecar, task.source.path, task.source.series, task.organs, task.config)
    except OSError as exc:  # the input cannot be read to compare its content
        reason = f"the input cannot be read ({os_problem(exc)})"
    if reason is None:
        logger.info("%s: outputs exist, skipped", task.paths.name)
        row = _row(task, "skipped", "its outputs were there", outputs=task.paths.files())
        carry_over(row, task.earlier, sidecar)
        return row
    error = (
        f"{task.paths.output} exists and is not this case's result: {reason}; pass "
        "--overwrite to replace it, or choose another -o"
    )
    logger.warning("case %s failed: %s", task.paths.name, error)
    return _row(task, "failed", error, seconds=None)


def _gather(
    inputs: Sequence[str | Path],
    jobs: str | Path | None,
    organs: str | Sequence[str] | None,
    folder: str | None,
    output: Path,
) -> tuple[list[CaseSource], tuple[str, ...]]:
    """Every case of ``inputs`` then ``jobs``, and the run's organs (the names of
    ``organs``; () when not given); checks that each case has organs to segment. The
    output folder is never searched."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs and jobs is None:
        raise InputError("no input: give files, folders or globs, or a jobs file.")
    cases = find_cases(inputs, exclude=output) if inputs else []
    cases += read_jobs(jobs, folder) if jobs is not None else []
    if organs is not None:  # unknown organs fail before any case runs
        return cases, tuple(o.name for o in parse_organs(organs, folder))
    if any(case.organs is None for case in cases):
        raise ConfigError(
            "no organ given: name them with --organ (organs=), or in the organs column of "
            "every jobs row."
        )
    return cases, ()


def _clean(paths: CasePaths) -> None:
    """Remove the temporaries a killed run left for this case (call it holding the case's
    lock: a live run's temporaries are its work in progress)."""
    for path in paths.files():
        if remove_temporaries(path):
            logger.info("removed half-written temporaries of %s", path)


def _clean_task(task: _Task) -> None:
    """After a Ray worker died on ``task``: its temporaries, unless another run now holds
    the case."""
    with case_lock(task.folder, task.paths.name) as mine:
        if mine:
            _clean(task.paths)


def _label(task: _Task) -> str:
    return task.paths.name


def _failed(task: _Task, reason: str) -> CaseRow:
    """The row of a case that raised, or whose Ray workers kept dying."""
    return _row(task, "failed", reason, seconds=None)


def _series(task: _Task) -> str:
    return task.source.series or ""


def _read(task: _Task) -> Volume | SalipError:
    """The case's volume, or the error reading it raised (reported with the case)."""
    try:
        return read_input(task.source.path, **dataclasses.asdict(task.config.input))
    except SalipError as exc:
        return exc
    except OSError as exc:
        return InputError(f"cannot read {task.source.path}: {os_problem(exc)}.")


def _segment_task(
    models: LazyModels, task: _Task, volume: Volume | SalipError | None = None
) -> CaseRow:
    """Read (unless given) and segment one case under its lock; a failure becomes the row's
    error. A case another run is writing is skipped; one another run finished since this
    run planned is checked as at planning (:func:`_existing`)."""
    with case_lock(task.folder, task.paths.name) as mine:
        if not mine:
            logger.info("%s: another salip run is writing it, skipped", task.paths.name)
            return _row(task, "skipped", "another salip run was writing it", seconds=None)
        if not task.overwrite and task.paths.complete():
            return _existing(task)
        _clean(task.paths)  # temporaries of a run that was killed while writing this case
        return _compute(models, task, volume)


def _compute(models: LazyModels, task: _Task, volume: Volume | SalipError | None) -> CaseRow:
    start = time.perf_counter()
    try:
        volume = _read(task) if volume is None else volume
        if isinstance(volume, SalipError):
            raise volume
        result: SegmentationResult = segment_case(
            volume,
            organs=task.organs,
            config=task.config,
            outputs=OutputRequest(
                task.paths.output, preview=task.paths.preview, report=task.paths.report
            ),
            overwrite=task.overwrite,
            segmenter=None,
            progress=False,
            models=models,
        )
    except (SalipError, OSError) as exc:
        error = one_line(exc) if isinstance(exc, SalipError) else os_problem(exc)
        if isinstance(exc, OSError) and exc.filename:
            error = f"{exc.filename}: {error}"
        logger.warning("case %s failed: %s", task.paths.name, error)
        return _row(task, "failed", error, seconds=time.perf_counter() - start)
    organs = result.report["organs"]
    return _row(
        task,
        "done",
        seconds=time.perf_counter() - start,
        device=str(result.report["models"].get("device", "")),
        strategy=str(result.report.get("strategy", {}).get("name", "")),
        volume_ml={organ: row["volume_ml"] for organ, row in organs.items()},
        confidence={organ: row["confidence"] for organ, row in organs.items()},
        outputs=list(result.outputs),
        written=now(),
    )


#: How a case of :func:`segment_many` runs (:mod:`salip.api.executor`).
_RUNNER: CaseRunner[_Task, CaseRow] = CaseRunner(
    setup=LazyModels, compute=_segment_task, read=_read, failed=_failed, clean=_clean_task,
    label=_label,
)  # fmt: skip
