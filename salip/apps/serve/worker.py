"""Running the queued jobs of ``salip serve``: a worker thread in the server process
(``--engine local``) or Ray worker actors (``--engine ray``), each loading the models once.

A job is a :class:`~salip.api.executor.CaseRunner` task, like a case of
:func:`salip.segment_many`: it runs :func:`~salip.api.pipeline.segment_case` into the
job's ``out`` folder, whose files are written as one transaction; an unexpected exception
becomes the job's one-line failure; on Ray, a job whose worker dies is re-queued on a
fresh worker, up to ``max_retries`` times. The dispatcher records each outcome in the
:class:`~salip.apps.serve.store.JobStore`.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salip.api.cluster import RayPool
from salip.api.executor import CaseRunner
from salip.api.factory import LazyModels, get_method
from salip.api.pipeline import OutputRequest, segment_case
from salip.api.service import output_name
from salip.apps.serve.intake import job_config
from salip.apps.serve.store import Job, JobStore
from salip.core.config import ClusterConfig, SegmentConfig
from salip.core.errors import SalipError, one_line
from salip.core.timing import StageTimer
from salip.io.writing import atomic_write, os_problem

__all__ = ["PROGRESS", "Dispatcher", "JobTask", "Outcome", "read_progress"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobTask:
    """One job to run: plain data, so that it can be sent to a Ray worker.

    Attributes:
        job_id: the job.
        folder: the job's folder (``input.*`` inside, outputs into ``out/``).
        input_name: the scan's file name in ``folder``.
        organs: the targets, in order.
        outputs: the output kinds to write.
        is_2d: whether the scan is a 2D image (its mask is a PNG).
        config: the job's settings.
    """

    job_id: str
    folder: Path
    input_name: str
    organs: tuple[str, ...]
    outputs: tuple[str, ...]
    is_2d: bool
    config: SegmentConfig


@dataclass(frozen=True)
class Outcome:
    """How a job ended: "done" with its files and organ summary, or "failed" with why."""

    state: str
    error: str = ""
    outputs: dict[str, str] | None = None
    summary: dict[str, Any] | None = None


def _out(task: JobTask, kind: str) -> Path | None:
    if kind not in task.outputs:
        return None
    return task.folder / "out" / output_name(kind, task.is_2d)


def run_job(models: LazyModels, task: JobTask, read: Any = None) -> Outcome:
    """Segment one job's scan into its ``out`` folder (``read`` is unused: a scan is read
    by the job itself)."""
    clean_job(task)
    timer = StageTimer(_Progress(task.folder / PROGRESS))
    mask = _out(task, "seg") or _out(task, "mask")
    request = OutputRequest(
        output=mask, write=mask is not None,
        output_type="dicom-seg" if "seg" in task.outputs else "nifti",
        preview=_out(task, "preview"), report=_out(task, "report"),
        statistics=_out(task, "statistics"), viewer=_out(task, "viewer"),
    )  # fmt: skip
    try:
        result = segment_case(
            task.folder / task.input_name, organs=task.organs, config=task.config,
            outputs=request, overwrite=False, segmenter=None, progress=False, models=models,
            timer=timer,
        )  # fmt: skip
    except (SalipError, OSError) as exc:
        error = one_line(exc, limit=500) if isinstance(exc, SalipError) else os_problem(exc)
        clean_job(task)
        error = error.replace(str(task.folder / task.input_name), "the upload")
        return Outcome("failed", error.replace(str(task.folder), "the job's folder"))
    summary = {
        name: {k: row[k] for k in ("found", "volume_ml", "voxels", "confidence")}
        for name, row in result.report["organs"].items()
    }
    files = {kind: path.name for kind in task.outputs if (path := _out(task, kind)) is not None}
    (task.folder / PROGRESS).unlink(missing_ok=True)
    return Outcome("done", outputs=files, summary=summary)


def clean_job(task: JobTask) -> None:
    """Remove what a job wrote (before it runs again, or after it failed)."""
    shutil.rmtree(task.folder / "out", ignore_errors=True)
    (task.folder / PROGRESS).unlink(missing_ok=True)


#: A running job's stages so far, in its folder (the API shows them; a file, so that Ray
#: workers on other machines can write it into the shared data folder).
PROGRESS = "progress.json"


class _Progress:
    """A :class:`StageTimer` listener writing the stages' seconds to a job's progress
    file, at most every ``every_s`` seconds (atomically: a reader sees a whole file)."""

    def __init__(self, path: Path, every_s: float = 0.5) -> None:
        self.path, self.every_s, self.last = path, every_s, 0.0

    def __call__(self, stage: str, seconds: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        record = {"stage": stage, "stages_s": {k: round(v, 2) for k, v in seconds.items()}}
        try:
            atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(record)))
        except OSError as exc:  # progress is a courtesy: a full disk fails the job elsewhere
            logger.debug("progress of %s not written: %s", self.path.parent.name, exc)


def read_progress(folder: Path) -> dict[str, Any]:
    """A running job's progress record ({} when none is written yet, or it is unreadable)."""
    try:
        return dict(json.loads((folder / PROGRESS).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return {}


def _failed(task: JobTask, reason: str) -> Outcome:
    return Outcome("failed", reason)


def _label(task: JobTask) -> str:
    return f"job {task.job_id}"


def _load_models(config: SegmentConfig) -> LazyModels:
    """A worker's models, loaded now (CLIP too when the server's method needs it)."""
    models = LazyModels(config.models, clip=get_method(config.segmenter.method).needs_clip)
    models.load()
    return models


class Dispatcher:
    """Takes queued jobs from ``store`` and runs them on ``cluster``'s engine.

    Args:
        store: the job queue.
        jobs_folder: the folder of the jobs' folders.
        defaults: the server's settings (each job's are these with its own).
        cluster: ``engine`` "local" (one worker thread here; ``ClusterConfig`` keeps
            ``workers`` for Ray) or "ray" (``workers`` actors).
        poll_s: seconds between looks at an empty queue.
    """

    def __init__(
        self,
        store: JobStore,
        jobs_folder: Path,
        defaults: SegmentConfig,
        cluster: ClusterConfig,
        *,
        poll_s: float = 0.2,
    ) -> None:
        self.store, self.jobs_folder, self.defaults = store, jobs_folder, defaults
        self.cluster, self.poll_s = cluster, poll_s
        self.runner: CaseRunner[JobTask, Outcome] = CaseRunner(
            setup=functools.partial(_load_models, defaults), compute=run_job,
            read=_no_read, failed=_failed, clean=clean_job, label=_label,
        )  # fmt: skip
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.problem = ""
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running: dict[str, JobTask] = {}

    def start(self) -> None:
        """Start the workers (they load their models, then take jobs)."""
        target = self._serve_ray if self.cluster.engine == "ray" else self._serve_local
        self._thread = threading.Thread(target=target, name="salip-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> list[str]:
        """Stop taking jobs; the jobs still running are put back in the queue (they are
        not counted as attempts). Returns their ids."""
        self.stop_event.set()
        if self._thread is not None:  # an idle local worker notices within poll_s
            self._thread.join(timeout_s if self.cluster.engine == "ray" else self.poll_s + 0.5)
        with self._lock:
            running = list(self._running)
        for job_id in running:
            self.store.release(job_id)
        return running

    def task(self, job: Job) -> JobTask:
        """The task of a claimed job."""
        settings = job.request.get("settings") or {}
        return JobTask(
            job.id, self.jobs_folder / job.id, job.input_name, tuple(job.request["organs"]),
            tuple(job.request["outputs"]), bool(job.request.get("is_2d")),
            job_config(self.defaults, settings),
        )  # fmt: skip

    def _take(self) -> JobTask | None:
        if self.stop_event.is_set():
            return None
        job = self.store.claim()
        if job is None:
            return None
        task = self.task(job)
        with self._lock:
            self._running[job.id] = task
        logger.info("job %s started (attempt %d)", job.id, job.attempts)
        return task

    def _finished(self, task: JobTask, outcome: Outcome) -> None:
        with self._lock:
            self._running.pop(task.job_id, None)
        if self.stop_event.is_set() and self.cluster.engine == "ray":
            return  # the job was stopped with the server, not finished
        state = self.store.finish(
            task.job_id, outcome.state, error=outcome.error, outputs=outcome.outputs,
            summary=outcome.summary,
        )  # fmt: skip
        if state == "cancelled" or state == "deleted":
            shutil.rmtree(task.folder, ignore_errors=True)
        logger.info(
            "job %s %s%s", task.job_id, state, f": {outcome.error}" if outcome.error else ""
        )

    def _serve_local(self) -> None:
        """One worker thread: load the models, then run jobs one at a time."""
        try:
            models = self.runner.setup()
        except Exception as exc:  # noqa: BLE001 - the server stays up and says why
            self.problem = f"models could not be loaded: {one_line(exc, limit=500)}"
            logger.error("%s", self.problem)
            return
        self.ready.set()
        while not self.stop_event.is_set():
            task = self._take()
            if task is None:
                self.stop_event.wait(self.poll_s)
                continue
            self._finished(task, self.runner.guarded(models, task))

    def _serve_ray(self) -> None:
        """Hand jobs to Ray worker actors, each loading the models once."""
        pool = RayPool(
            self.runner.setup, functools.partial(_ray_job, self.runner), self.runner.failed,
            on_death=self.runner.clean, label=self.runner.label,
        )  # fmt: skip
        try:
            pool.serve(self._take, self.cluster, self._finished, self.stop_event,
                       ready=self.ready.set, poll_s=self.poll_s)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the server stays up and says why
            self.problem = f"the Ray workers stopped: {one_line(exc, limit=500)}"
            logger.error("%s", self.problem)

    def busy(self) -> bool:
        """Whether the worker thread is still running (inside a job, after :meth:`stop`)."""
        return self._thread is not None and self._thread.is_alive()


def _ray_job(runner: CaseRunner[JobTask, Outcome], models: LazyModels, task: JobTask) -> Outcome:
    """A job on a Ray worker, an unexpected exception made its failure."""
    return runner.guarded(models, task)


def _no_read(task: JobTask) -> None:
    """Jobs are not read ahead: a job reads its scan itself."""
