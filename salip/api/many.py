"""``salip.segment_many``: a cohort of scans in one run, models loaded once.

Each input is a file (NIfTI, 2D image), a DICOM folder or .zip, a folder to search, or a
glob (:func:`~salip.api.cases.find_cases`); a jobs file gives each case its own organs and
output (:func:`~salip.api.cases.read_jobs`). Every case is written into one output folder
with the files of a single run; a case that fails is recorded with its one-line reason and
the run goes on; a case whose outputs are already there is skipped (``overwrite``
recomputes it). ``run.csv`` in the folder holds one row per case.

Cases run in this process (``engine="local"``: the next case is read in a background thread
while one runs) or on Ray workers (``engine="ray"``, :class:`~salip.api.cluster.RayPool`),
which write their cases into the same folder.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salip.api.cases import CasePaths, CaseSource, find_cases, plan_outputs, read_jobs
from salip.api.cluster import RayPool, require_ray
from salip.api.factory import MethodKind, Models, load_models
from salip.api.pipeline import OutputRequest, SegmentationResult, segment_case
from salip.core.config import ClusterConfig, SegmentConfig
from salip.core.errors import ConfigError, InputError, SalipError, one_line
from salip.core.organs import parse_organs
from salip.core.prefetch import prefetch
from salip.core.timing import StageTimer
from salip.io import Volume, read_input
from salip.io.writing import atomic_write, remove_temporaries

logger = logging.getLogger(__name__)

#: The per-case table written into the output folder.
RUN_TABLE = "run.csv"
_CLUSTER_FIELDS = tuple(f.name for f in dataclasses.fields(ClusterConfig))


@dataclass
class CaseRow:
    """One case of a :func:`segment_many` run (a row of ``run.csv``).

    Attributes:
        input: the case's input path.
        name: its output name (the mask path relative to the output folder, no suffix).
        status: "done", "skipped" (its outputs were there) or "failed".
        error: the one-line reason of a failure, else "".
        seconds: wall time of the case (0 when skipped).
        device: where it ran ("" when skipped or failed before running).
        strategy: the strategy that ran ("" when skipped or failed).
        volume_ml: organ name -> volume in ml (volumes; None for 2D images).
        outputs: the files of the case.
        series: the DICOM series read, for a folder or zip holding several, else "".
    """

    input: Path
    name: str
    status: str
    error: str = ""
    seconds: float = 0.0
    device: str = ""
    strategy: str = ""
    volume_ml: dict[str, float | None] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    series: str = ""


@dataclass(frozen=True)
class _Task:
    """One case to compute: where it comes from, where it goes, and how."""

    source: CaseSource
    paths: CasePaths
    organs: tuple[str, ...]
    config: SegmentConfig
    overwrite: bool


class _SharedModels:
    """Loads the models on the first case that needs them, then hands the same ones out."""

    def __init__(self) -> None:
        self.models: Models | None = None

    def __call__(self, kind: MethodKind, config: SegmentConfig, timer: StageTimer) -> Models:
        if self.models is None or (kind.needs_clip and self.models.clip is None):
            start = time.perf_counter()
            self.models = load_models(config.models, clip=kind.needs_clip)
            timer.add("load_models", start)
        return self.models


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
        output: the output folder (created if needed). Case ``NAME`` (see
            :func:`~salip.api.cases.case_names`) writes ``NAME.nii.gz`` (``.png`` for 2D
            images) with its ``NAME.json`` sidecar, and with ``preview``/``report``
            ``NAME.preview.png`` and ``NAME.report.json``; ``run.csv`` lists every case.
        organs: as for :func:`salip.segment`; the default of jobs rows without organs.
        jobs: a jobs file (CSV or JSON Lines; see :func:`~salip.api.cases.read_jobs`),
            whose cases follow those of ``inputs``.
        overwrite: recompute cases whose outputs exist (default: skip them).
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
    prompts_folder = cfg.scoring.prompts_dir
    cases, run_organs = _gather(inputs, jobs, organs, prompts_folder)
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder for the outputs of several cases.")
    folder.mkdir(parents=True, exist_ok=True)
    plans = plan_outputs(cases, folder, preview=preview, report=report)
    rows: dict[int, CaseRow] = {}
    todo: list[tuple[int, _Task]] = []
    for index, (case, paths) in enumerate(zip(cases, plans)):
        if not overwrite and paths.complete():
            logger.info("%s: outputs exist, skipped", case.path)
            rows[index] = CaseRow(case.path, paths.name, "skipped", series=case.series or "")
            continue
        _clean(paths)  # temporaries of a run that was killed while writing this case
        todo.append((index, _Task(case, paths, case.organs or run_organs, cfg, overwrite)))
    with tqdm(total=len(cases), desc="cases", unit="case", disable=not progress) as bar:
        bar.update(len(rows))

        def finished(position: int, row: CaseRow) -> None:
            rows[todo[position][0]] = row
            _write_table(folder, [rows[i] for i in sorted(rows)])
            bar.update(1)

        if not todo:
            _write_table(folder, [rows[i] for i in sorted(rows)])
        elif cluster.engine == "ray":
            pool = RayPool(_SharedModels, _segment_task, _lost, on_death=_clean_task, label=_label)
            pool.run([task for _, task in todo], cluster, finished)
        else:
            _run_local([task for _, task in todo], finished)
    ordered = [rows[i] for i in sorted(rows)]
    failed = sum(r.status == "failed" for r in ordered)
    logger.info("%d case(s): %d failed; table in %s", len(ordered), failed, folder / RUN_TABLE)
    return ordered


def _gather(
    inputs: Sequence[str | Path],
    jobs: str | Path | None,
    organs: str | Sequence[str] | None,
    folder: str | None,
) -> tuple[list[CaseSource], tuple[str, ...]]:
    """Every case of ``inputs`` then ``jobs``, and the run's organs (the names of
    ``organs``; () when not given); checks that each case has organs to segment."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    if not inputs and jobs is None:
        raise InputError("no input: give files, folders or globs, or a jobs file.")
    cases = find_cases(inputs) if inputs else []
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
    for path in paths.files():
        if remove_temporaries(path):
            logger.info("removed half-written temporaries of %s", path)


def _clean_task(task: _Task) -> None:
    _clean(task.paths)


def _label(task: _Task) -> str:
    return task.paths.name


def _lost(task: _Task, reason: str) -> CaseRow:
    """The row of a case whose Ray workers kept dying."""
    return CaseRow(task.source.path, task.paths.name, "failed", reason, series=_series(task))


def _series(task: _Task) -> str:
    return task.source.series or ""


def _run_local(tasks: Sequence[_Task], finished: Callable[[int, CaseRow], None]) -> None:
    """Run the cases in this process, each read in a background thread while the one before
    it runs."""
    models = _SharedModels()
    volumes = prefetch(tasks, _read, depth=1)
    for position, (task, volume) in enumerate(zip(tasks, volumes)):
        finished(position, _segment_task(models, task, volume))


def _read(task: _Task) -> Volume | SalipError:
    """The case's volume, or the error reading it raised (reported with the case)."""
    options = dataclasses.asdict(task.config.input)
    if task.source.series is not None:
        options["series"] = task.source.series
    try:
        return read_input(task.source.path, **options)
    except SalipError as exc:
        return exc


def _segment_task(
    models: _SharedModels, task: _Task, volume: Volume | SalipError | None = None
) -> CaseRow:
    """Read (unless given) and segment one case; a failure becomes the row's error."""
    start = time.perf_counter()
    path, name = task.source.path, task.paths.name
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
    except SalipError as exc:
        logger.warning("%s: failed: %s", path, one_line(exc))
        seconds = time.perf_counter() - start
        return CaseRow(path, name, "failed", one_line(exc), seconds, series=_series(task))
    organs = result.report["organs"]
    return CaseRow(
        path,
        name,
        "done",
        seconds=time.perf_counter() - start,
        device=str(result.report["models"].get("device", "")),
        strategy=str(result.report.get("strategy", {}).get("name", "")),
        volume_ml={organ: row["volume_ml"] for organ, row in organs.items()},
        outputs=list(result.outputs),
        series=_series(task),
    )


def _write_table(folder: Path, rows: Sequence[CaseRow]) -> None:
    """``run.csv``: one row per case so far, written atomically."""
    organs = list(dict.fromkeys(o for r in rows for o in r.volume_ml))
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(
        ["input", "series", "name", "status", "error", "seconds", "device", "strategy"]
        + [f"{o}_ml" for o in organs]
    )
    for r in rows:
        volumes = ["" if r.volume_ml.get(o) is None else r.volume_ml[o] for o in organs]
        writer.writerow(
            [r.input, r.series, r.name, r.status, r.error, round(r.seconds, 3), r.device]
            + [r.strategy]
            + volumes
        )
    content = text.getvalue()
    atomic_write(folder / RUN_TABLE, lambda tmp: tmp.write_text(content, encoding="utf-8"))
