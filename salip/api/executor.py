"""Run many independent cases with the models loaded once: in this process, reading the
next case in a background thread while one runs, or on Ray worker actors
(:class:`~salip.api.cluster.RayPool`).

One runner serves every cohort of salip: :func:`salip.segment_many` (a task is a case to
segment and write under its lock, the result its ledger row) and the benchmark (a task is
a case with the methods to run on it, the result their saved records). Each says what a
task is through a :class:`CaseRunner`; the runner owns the rest:

- the per-process state (:class:`~salip.api.factory.LazyModels`: loaded by the first case
  that needs them, in each Ray worker by its first task);
- read-ahead of the next case's input (in this process; a Ray worker reads its own);
- failure rows: a task that raises is logged with its traceback, what it left
  half-written is removed, and it becomes ``failed(task, reason)``; the others go on;
- on Ray, a task whose workers keep dying becomes ``failed(task, reason)`` too.

Each task is its own transaction: its compute writes its outputs atomically, so a run
killed at any point leaves every finished case whole and the case in flight to ``clean``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from salip.api.cluster import RayPool
from salip.core.config import ClusterConfig
from salip.core.errors import one_line
from salip.core.prefetch import prefetch

__all__ = ["CaseRunner"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _nothing(task: Any) -> None:
    """The default clean-up: a task that leaves nothing half-written."""


@dataclass(frozen=True)
class CaseRunner(Generic[T, R]):
    """How to run one kind of task; :meth:`run` runs a list of them.

    On Ray every callable is pickled to the workers: use module-level functions (or
    ``functools.partial`` of them) and plain-data tasks.

    Attributes:
        setup: makes the state a process's tasks share, e.g. ``LazyModels(config)``;
            called once here, and once in each Ray worker.
        compute: ``compute(state, task, read)`` runs one task and returns its result;
            ``read`` is what ``read(task)`` returned, or None where the task was not read
            ahead (on Ray workers): then ``compute`` reads it.
        read: reads a task's input ahead, in a background thread. It must return, not
            raise, an error reading the input, so that the error stays with its case.
        failed: ``failed(task, reason)`` is the result of a task that raised an
            unexpected exception, or whose Ray workers kept dying.
        clean: removes what a task left half-written, after it raised or its worker died.
        label: a task's name in log lines.
    """

    setup: Callable[[], Any]
    compute: Callable[[Any, T, Any], R]
    read: Callable[[T], Any]
    failed: Callable[[T, str], R]
    clean: Callable[[T], None] = _nothing
    label: Callable[[T], str] = str

    def run(
        self,
        tasks: Sequence[T],
        cluster: ClusterConfig,
        finished: Callable[[int, R], None],
        *,
        state: Any = None,
    ) -> Any:
        """Run every task; ``finished(position, result)`` is called here as each ends
        (in order in this process, in completion order on Ray).

        Args:
            tasks: the tasks.
            cluster: where to run them (``cluster.engine``: "local" or "ray").
            finished: receives each task's position in ``tasks`` and its result.
            state: the state for local tasks (default: ``setup()``, made here).

        Returns:
            The state the local tasks shared (None on Ray, or when there was no task).
        """
        if not tasks:
            return state
        guarded = functools.partial(_guarded, self)
        if cluster.engine == "ray":
            pool = RayPool(self.setup, guarded, self.failed, on_death=self.clean, label=self.label)
            pool.run(tasks, cluster, finished)
            return None
        state = self.setup() if state is None else state
        inputs = prefetch(tasks, self.read, depth=1)
        for position, (task, read) in enumerate(zip(tasks, inputs)):
            finished(position, guarded(state, task, read))
            del read  # the input of a finished case is not held while the next one runs
        return state

    def guarded(self, state: Any, task: T, read: Any = None) -> R:
        """``compute(state, task, read)``, an unexpected exception made the task's
        failure (logged, cleaned up): for callers that hand out tasks themselves."""
        return _guarded(self, state, task, read)


def _guarded(runner: CaseRunner[T, R], state: Any, task: T, read: Any = None) -> R:
    """``runner.compute``, with an unexpected exception made the task's failure."""
    try:
        return runner.compute(state, task, read)
    except Exception as exc:  # noqa: BLE001
        # One bad case (a bug on an odd input, a device out of memory) must not end a run
        # of hundreds; the exception type and traceback are logged, since it may be a bug.
        reason = f"{type(exc).__name__}: {one_line(exc)}"
        logger.warning("%s failed: %s", runner.label(task), reason, exc_info=True)
        runner.clean(task)
        return runner.failed(task, reason)
