"""Many scans on Ray: a local runtime (2 CPUs, 2 workers) gives the same outputs as
``--engine local``, survives a killed worker, and records a case that keeps killing them."""

from __future__ import annotations

import csv
import logging
import os
import signal
import sys

import pytest

import salip
from salip.api.cases import case_names, find_cases
from salip.apps.bench.runner import run_benchmark
from salip.apps.cli import main
from salip.core.errors import ConfigError
from tests.conftest import REPO

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dev]'")

FAST = dict(points_per_side=4, modality="ct")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray runtime of 2 CPUs shared by the tests of this module."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture
def cases(cohort):
    """A NIfTI, a DICOM folder, a folder of two PNGs and a corrupt file."""
    return [cohort[0], cohort[1], cohort[3], cohort[4]]


class _KillOnDispatch(logging.Handler):
    """Kills the worker process a case is handed to (SIGKILL, by the PID the driver logs),
    the first ``times`` times that case is dispatched."""

    def __init__(self, case: str, times: int) -> None:
        super().__init__(logging.INFO)
        self.case, self.times, self.killed = case, times, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "%s -> worker %d (pid %d on %s)":
            return
        name, _number, pid, _host = record.args
        if name == self.case and len(self.killed) < self.times:
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)


@pytest.fixture
def kill_on_dispatch():
    logger = logging.getLogger("salip.api.cluster")
    handlers, level = [], logger.level
    logger.setLevel(logging.INFO)

    def install(case: str, times: int) -> _KillOnDispatch:
        handler = _KillOnDispatch(case, times)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    yield install
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def one_thread():
    """torch on one thread in this process, as in each Ray worker (``cpus_per_worker=1``):
    CPU float sums split over a different number of threads can round differently and flip
    a pixel that sits on the mask threshold (seen: 1 of 86,163 in a box-prompted mask)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _table(folder):
    """run.csv without the columns of times (seconds, written, history)."""
    times = ("seconds", "written", "history")
    with open(folder / "run.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k not in times} for row in csv.DictReader(handle)]


def _files(folder):
    """Every file of the folder (hidden temporaries included) and its bytes, but run.csv."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "run.csv"}


def test_ray_outputs_equal_local_and_survive_a_killed_worker(
    local_ray, cases, tmp_path, tiny_models, kill_on_dispatch, caplog, one_thread
):
    options = {**FAST, **tiny_models}
    local = salip.segment_many(cases, organs="liver", output=tmp_path / "local", **options)
    assert [r.status for r in local] == ["done"] * 4 + ["failed"]
    ct = case_names(find_cases(cases))[0]  # the CT volume's case name
    handler = kill_on_dispatch(ct, times=1)
    distributed = salip.segment_many(
        cases, organs="liver", output=tmp_path / "ray", engine="ray", workers=2, **options
    )
    assert len(handler.killed) == 1  # the worker running the CT volume was killed...
    assert any(f"died running {ct} (attempt 1)" in m for m in caplog.messages)
    # ...and its case re-queued: every case completes, byte for byte as with one process.
    assert [r.status for r in distributed] == ["done"] * 4 + ["failed"]
    assert _table(tmp_path / "ray") == _table(tmp_path / "local")
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")  # nothing partial, no temp


def test_a_case_that_keeps_killing_workers_is_recorded(
    local_ray, cases, tmp_path, tiny_models, kill_on_dispatch
):
    pngs = sorted((cases[2]).iterdir())
    handler = kill_on_dispatch("amos_0004_75", times=10)
    rows = salip.segment_many(
        pngs,
        organs="liver",
        output=tmp_path / "out",
        engine="ray",
        workers=2,
        max_retries=1,
        **FAST,
        **tiny_models,
    )
    assert len(handler.killed) == 2  # the first try and one retry
    assert [r.status for r in rows] == ["failed", "done"]
    assert rows[0].error.startswith("its worker died 2 times; last: ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".salip.lock",  # empty; its locks ended with the run
        "amos_0006_90.json",
        "amos_0006_90.png",
        "run.csv",
    ]


def test_distributed_benchmark_gives_the_same_cases_csv(
    local_ray, tmp_path, tiny_models, one_thread
):
    config = tmp_path / "bench.toml"
    data = REPO.parent / "shared" / "data"
    config.write_text(
        f"""
[models]
sam_checkpoint = "{tiny_models["sam_checkpoint"]}"
clip_model = "{tiny_models["clip_model"]}"
device = "cpu"

[metrics]
bootstrap_resamples = 50

[[methods]]
name = "salip"
method = "cascade"
points_per_side = 4
pred_iou_thresh = 0.0
stability_score_thresh = 0.0

[[methods]]
name = "sam-gt-box"
method = "sam-gt-box"

[[datasets]]
name = "amos"
kind = "image-mask-pairs"
images = "{data}/slices/images/*.png"
masks = "{{dir}}/../masks/{{stem}}_liver.png"
target = "liver"
modality = "ct"
""",
        encoding="utf-8",
    )
    local = run_benchmark(config, out=tmp_path / "local")
    distributed = run_benchmark(config, out=tmp_path / "ray", engine="ray", workers=2)
    assert (local.computed, distributed.computed) == (4, 4)

    def table(folder):  # every column but the timing
        with open(folder / "cases.csv", newline="") as handle:
            return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(handle)]

    assert table(tmp_path / "ray") == table(tmp_path / "local")
    before = (tmp_path / "ray" / "cases.csv").read_bytes()
    again = run_benchmark(config, out=tmp_path / "ray", engine="ray", workers=2)
    assert (again.computed, again.reused) == (0, 4)  # a rerun reuses every record
    assert (tmp_path / "ray" / "cases.csv").read_bytes() == before


def test_without_ray_the_engine_names_the_extra(cases, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'salip\[ray\]'"):
        salip.segment_many(cases[:1], organs="liver", output=tmp_path / "out", engine="ray")
    args = ["segment", *map(str, cases[:2]), "--organ", "liver", "-o", str(tmp_path / "x")]
    assert main([*args, "--engine", "ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "salip: error: --engine ray needs Ray, which is not installed; pip install 'salip[ray]'."
    ]
    assert not (tmp_path / "x").exists()
    assert main([*args, "--workers", "2"]) == 1
    assert "--workers need --engine ray" in capsys.readouterr().err


class _InterruptOnDispatch(logging.Handler):
    """Ctrl-C in the driver just after ``case`` is handed to a worker."""

    def __init__(self, case: str) -> None:
        super().__init__(logging.INFO)
        self.case = case

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "%s -> worker %d (pid %d on %s)" and record.args[0] == self.case:
            raise KeyboardInterrupt


def test_an_interrupted_ray_run_leaves_nothing_partial_and_completes_when_rerun(
    local_ray, cases, tmp_path, tiny_models, one_thread
):
    options = {**FAST, **tiny_models}
    good = cases[:3]  # the NIfTI, the DICOM series and the folder of two PNGs
    salip.segment_many(good, organs="liver", output=tmp_path / "local", **options)
    logger = logging.getLogger("salip.api.cluster")
    png = next(n for n in case_names(find_cases(good)) if n.endswith("amos_0006_90"))
    handler, level = _InterruptOnDispatch(png), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    out = tmp_path / "ray"
    try:
        with pytest.raises(KeyboardInterrupt):
            salip.segment_many(good, organs="liver", output=out, engine="ray", workers=2, **options)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    local = _files(tmp_path / "local")
    partial = _files(out)
    assert set(partial) < set(local)  # only finished cases' files: no temporary, no partial
    assert all(partial[name] == local[name] for name in partial)
    salip.segment_many(good, organs="liver", output=out, engine="ray", workers=2, **options)
    assert _files(out) == local


def test_a_server_replaces_a_killed_ray_worker_and_finishes_the_job(
    local_ray, tmp_path, tiny_models, kill_on_dispatch, one_thread
):
    """``salip serve --engine ray``: the worker running a job is killed; a fresh one loads
    the models and the job ends done, with the bytes of a local run."""
    import shutil
    import time

    from salip.apps.serve.store import Job, JobStore
    from salip.apps.serve.worker import Dispatcher
    from salip.core.config import ClusterConfig, SegmentConfig
    from tests.conftest import SLICES, require_data

    png = require_data(SLICES / "images" / "amos_0006_90.png")
    options = {**FAST, **{k: v for k, v in tiny_models.items() if k != "clip_pretrained"}}
    store = JobStore(tmp_path / "jobs.sqlite3")
    (tmp_path / "jobs" / "j1").mkdir(parents=True)
    shutil.copy(png, tmp_path / "jobs" / "j1" / "input.png")
    request = {"organs": ["liver"], "outputs": ["mask", "labels", "report"], "is_2d": True}
    store.add(Job("j1", "queued", request, "input.png"))
    handler = kill_on_dispatch("job j1", times=1)
    cluster = ClusterConfig(engine="ray", workers=1, max_retries=2)
    dispatcher = Dispatcher(store, tmp_path / "jobs", SegmentConfig().replace(**options), cluster)
    dispatcher.start()
    try:
        deadline = time.monotonic() + 240
        while store.get("j1").state != "done" and time.monotonic() < deadline:
            assert store.get("j1").state in ("queued", "running"), store.get("j1").error
            time.sleep(0.2)
        assert dispatcher.ready.is_set()
    finally:
        dispatcher.stop(timeout_s=60)
    assert len(handler.killed) == 1
    job = store.get("j1")
    assert job.state == "done" and job.attempts == 1, job  # retried inside the pool
    salip.segment(png, organs="liver", output=tmp_path / "local.png", **FAST, **tiny_models)
    remote = tmp_path / "jobs" / "j1" / "out" / "mask.png"
    assert remote.read_bytes() == (tmp_path / "local.png").read_bytes()
