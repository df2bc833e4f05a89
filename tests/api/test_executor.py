"""The case runner: shared state, read-ahead, failures kept with their case."""

from __future__ import annotations

import logging
import threading

import pytest

from salip.api.executor import CaseRunner
from salip.api.factory import LazyModels
from salip.core.config import ClusterConfig, ModelConfig
from salip.core.errors import ConfigError

LOCAL = ClusterConfig()


class _State:
    made = 0

    def __init__(self) -> None:
        type(self).made += 1
        self.seen: list[str] = []


def _read(task: str) -> tuple[str, str]:
    return task.upper(), threading.current_thread().name


def _compute(state: _State, task: str, read: tuple[str, str] | None) -> str:
    state.seen.append(task)
    if task == "bad":
        raise ValueError("an odd input\nwith a second line")
    assert read is not None and read[0] == task.upper()
    return f"{task}:{read[1].split('_')[0]}"


def _failed(task: str, reason: str) -> str:
    return f"{task} failed: {reason}"


def test_tasks_share_one_state_and_are_read_ahead():
    _State.made = 0
    runner = CaseRunner(setup=_State, compute=_compute, read=_read, failed=_failed)
    results: dict[int, str] = {}
    state = runner.run(["a", "b", "c"], LOCAL, results.__setitem__)
    assert _State.made == 1 and state.seen == ["a", "b", "c"]
    # Every input was read in the read-ahead thread, not in the computing one.
    assert results == {0: "a:salip-prefetch", 1: "b:salip-prefetch", 2: "c:salip-prefetch"}
    given = _State()
    assert runner.run(["d"], LOCAL, results.__setitem__, state=given) is given
    assert given.seen == ["d"] and _State.made == 2  # the given state, none made


def test_a_task_that_raises_becomes_its_failure_and_the_others_go_on(caplog):
    cleaned: list[str] = []
    runner = CaseRunner(
        setup=_State, compute=_compute, read=_read, failed=_failed, clean=cleaned.append
    )
    results: dict[int, str] = {}
    with caplog.at_level(logging.WARNING, logger="salip.api.executor"):
        state = runner.run(["a", "bad", "c"], LOCAL, results.__setitem__)
    assert state.seen == ["a", "bad", "c"]
    assert results[1] == "bad failed: ValueError: an odd input"  # its first line
    assert results[0].startswith("a:") and results[2].startswith("c:")
    assert cleaned == ["bad"]
    record = next(r for r in caplog.records if "bad failed" in r.getMessage())
    assert record.exc_info is not None  # the traceback is kept: it may be a bug


def test_an_interrupt_is_not_a_failure():
    def compute(state, task, read):
        raise KeyboardInterrupt

    runner = CaseRunner(setup=_State, compute=compute, read=_read, failed=_failed)
    with pytest.raises(KeyboardInterrupt):
        runner.run(["a", "b"], LOCAL, lambda position, result: None)


def test_no_task_makes_no_state():
    _State.made = 0
    runner = CaseRunner(setup=_State, compute=_compute, read=_read, failed=_failed)
    assert runner.run([], LOCAL, lambda position, result: None) is None
    assert _State.made == 0


def test_lazy_models_load_once_and_again_only_for_clip(monkeypatch):
    loads: list[bool] = []

    class _Loaded:
        def __init__(self, clip: bool) -> None:
            self.clip = object() if clip else None
            self.device = "cpu"

    def load_models(config, *, clip):
        loads.append(clip)
        return _Loaded(clip)

    monkeypatch.setattr("salip.api.factory.load_models", load_models)
    models = LazyModels(ModelConfig())
    assert models.loaded is None  # nothing is loaded until asked
    first = models.load()
    assert models.load() is first and loads == [False]
    with_clip = models.load(clip=True)
    assert with_clip is not first and with_clip.clip is not None and loads == [False, True]
    assert models.load() is with_clip and models.load(clip=True) is with_clip
    with pytest.raises(ConfigError, match="no model settings"):
        LazyModels().load()
