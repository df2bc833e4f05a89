"""Run independent tasks (the cases of a cohort, a benchmark's cases) on Ray worker actors.

Each worker is a Ray actor that sets up its state once (loads the models) and then runs
one task at a time. The driver hands the next task to whichever worker is free, so a slow
case holds up no queue. A worker that dies (its process killed, out of memory, its node
lost) is replaced and its task is re-queued, up to ``ClusterConfig.max_retries`` times;
a task that keeps killing workers is recorded as lost and the others go on. Tasks write
their own outputs (atomically); the driver only collects what they return.

Ray is an optional dependency (``pip install 'salip[ray]'``), imported only here and only
when a run asks for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from salip.core.config import ClusterConfig
from salip.core.errors import ConfigError, one_line

__all__ = [
    "RayPool",
    "require_ray",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def require_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: Ray is not installed (the message names the extra).
    """
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "--engine ray needs Ray, which is not installed; pip install 'salip[ray]'."
        ) from exc
    return ray


class _Worker:
    """The body of one worker actor: ``state = setup()`` on its first task, then
    ``work(state, task)`` per task."""

    def __init__(self, setup: Callable[[], Any], work: Callable[[Any, Any], Any]) -> None:
        self._setup, self._work, self._state = setup, work, None

    def where(self) -> tuple[str, int]:
        """(host name, process id) of the actor."""
        return socket.gethostname(), os.getpid()

    def prepare(self) -> None:
        """Set up the state now (a server's workers load their models before they are
        reported ready)."""
        if self._state is None:
            self._state = self._setup()

    def run(self, task: Any) -> Any:
        self.prepare()
        return self._work(self._state, task)


@dataclass
class _Slot:
    """One worker: its number, actor handle, host, process id and current task."""

    number: int
    actor: Any
    host: str = ""
    pid: int = 0
    task: int | None = None


def _connect(ray: Any, cluster: ClusterConfig) -> bool:
    """Join the cluster, or start a local runtime; True when this call started Ray."""
    if ray.is_initialized():
        return False
    try:
        ray.init(
            address=cluster.ray_address,
            include_dashboard=False,
            # Ray logs through its own handler: its notices (token authentication, ...)
            # are kept for runs that show salip's progress, not for quiet ones.
            logging_level=logging.WARNING if logger.isEnabledFor(logging.INFO) else logging.ERROR,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = cluster.ray_address or "a local runtime"
        raise ConfigError(
            f"cannot start or reach Ray ({where}): {one_line(exc)}; check --ray-address, or "
            "start the cluster with `ray start --head`."
        ) from exc
    return True


def _plan_workers(ray: Any, cluster: ClusterConfig, tasks: int) -> tuple[int, float]:
    """(workers, GPUs per worker) that the cluster can hold.

    Raises:
        ConfigError: more GPUs or CPUs asked for than the cluster has.
    """
    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    per_gpu = cluster.gpus_per_worker
    if per_gpu is None:
        per_gpu = 1.0 if gpus >= 1 else 0.0
    workers = cluster.workers
    if workers is None:
        workers = max(1, int(gpus // per_gpu)) if per_gpu > 0 else 1
    if workers * per_gpu > gpus:
        raise ConfigError(
            f"{workers} worker(s) x {per_gpu:g} GPU(s) need more GPUs than the Ray cluster "
            f"has ({gpus:g}); lower --workers or --gpus-per-worker."
        )
    if workers * cluster.cpus_per_worker > cpus:
        raise ConfigError(
            f"{workers} worker(s) x {cluster.cpus_per_worker} CPU(s) need more CPUs than the "
            f"Ray cluster has ({cpus:g}); lower --workers or --cpus-per-worker."
        )
    return min(workers, tasks), per_gpu


class RayPool(Generic[T, R]):
    """Runs tasks on Ray worker actors; see the module docstring.

    Args:
        setup: makes a worker's state, once per worker, in the worker (e.g. loads models).
        work: ``work(state, task)`` runs one task in a worker and returns its result.
        lost: ``lost(task, reason)`` is the result of a task whose workers kept dying.
        on_death: called in the driver with a task whose worker died, before it is
            re-queued (e.g. to remove the task's half-written temporaries).
        label: a task's name in log lines.

    ``setup``, ``work`` and the tasks are pickled to the workers: use module-level
    functions and plain data.
    """

    def __init__(
        self,
        setup: Callable[[], Any],
        work: Callable[[Any, T], R],
        lost: Callable[[T, str], R],
        *,
        on_death: Callable[[T], None] = lambda task: None,
        label: Callable[[T], str] = str,
    ) -> None:
        self.setup, self.work, self.lost = setup, work, lost
        self.on_death, self.label = on_death, label

    def run(
        self,
        tasks: Sequence[T],
        cluster: ClusterConfig,
        on_result: Callable[[int, R], None],
    ) -> None:
        """Run every task; ``on_result(index, result)`` is called in the driver as each
        finishes (in completion order).

        Raises:
            ConfigError: Ray missing, unreachable, or too small for the workers asked for.
            Exception: a task raised (a bug: tasks report expected failures as results);
                the workers are stopped first.
        """
        if not tasks:
            return
        ray = require_ray()
        started = _connect(ray, cluster)
        slots: list[_Slot] = []
        try:
            workers, gpus = _plan_workers(ray, cluster, len(tasks))
            actor = self._actor(ray, cluster, gpus)
            slots = [self._start(ray, actor, number) for number in range(workers)]
            self._schedule(ray, actor, slots, list(tasks), cluster, on_result)
        finally:
            self._stop(ray, slots, tasks)
            if started:
                ray.shutdown()

    def serve(
        self,
        take: Callable[[], T | None],
        cluster: ClusterConfig,
        on_result: Callable[[T, R], None],
        stop: threading.Event,
        *,
        ready: Callable[[], None] = lambda: None,
        poll_s: float = 0.5,
    ) -> None:
        """Run tasks as ``take()`` hands them out (None: none now, asked again within
        ``poll_s``) until ``stop`` is set, on workers started once; ``on_result(task,
        result)`` as each finishes. Each worker sets up its state before ``ready()`` is
        called. A task still running when ``stop`` is set is cleaned up (``on_death``), not
        finished.

        Raises:
            ConfigError: Ray missing, unreachable, or too small for the workers asked for.
        """
        ray = require_ray()
        started = _connect(ray, cluster)
        slots: list[_Slot] = []
        tasks: list[T] = []
        try:
            workers, gpus = _plan_workers(ray, cluster, tasks=1 << 30)  # no task count caps it
            actor = self._actor(ray, cluster, gpus)
            slots = [self._start(ray, actor, number) for number in range(workers)]
            ray.get([slot.actor.prepare.remote() for slot in slots])
            ready()

            def more() -> int | None:
                task = take()
                if task is None:
                    return None
                tasks.append(task)
                return len(tasks) - 1

            def finished(index: int, result: R) -> None:
                on_result(tasks[index], result)

            self._schedule(
                ray, actor, slots, tasks, cluster, finished, more=more, stop=stop, poll_s=poll_s
            )
        finally:
            self._stop(ray, slots, tasks)
            if started:
                ray.shutdown()

    def _actor(self, ray: Any, cluster: ClusterConfig, gpus: float) -> Any:
        """The worker actor class with its resources."""
        return ray.remote(
            num_cpus=cluster.cpus_per_worker,
            num_gpus=gpus,
            # The driver's salip settings (SALIP_HOME, SALIP_PROMPTS_DIR, ...) hold in
            # the workers too, wherever they run.
            runtime_env={"env_vars": _salip_environment()},
        )(_Worker)

    def _start(self, ray: Any, actor: Any, number: int) -> _Slot:
        """Start worker ``number`` and wait until it runs."""
        slot = _Slot(number, actor.remote(self.setup, self.work))
        slot.host, slot.pid = ray.get(slot.actor.where.remote())
        logger.info("worker %d: pid %d on %s", number, slot.pid, slot.host)
        return slot

    def _schedule(
        self,
        ray: Any,
        actor: Any,
        slots: list[_Slot],
        tasks: list[T],
        cluster: ClusterConfig,
        on_result: Callable[[int, R], None],
        *,
        more: Callable[[], int | None] | None = None,
        stop: threading.Event | None = None,
        poll_s: float = 0.5,
    ) -> None:
        """Hand ``tasks`` (by index) to idle workers until all are done; serving
        (``stop`` given), also each new task ``more()`` adds, until ``stop`` is set."""
        queue, attempts = deque(range(len(tasks))), Counter[int]()
        idle, running = list(slots), {}
        while (queue or running) if stop is None else not stop.is_set():
            while more is not None and idle and not queue and (index := more()) is not None:
                queue.append(index)
            while idle and queue:
                slot, index = idle.pop(0), queue.popleft()
                slot.task = index
                running[slot.actor.run.remote(tasks[index])] = slot
                logger.info(
                    "%s -> worker %d (pid %d on %s)",
                    self.label(tasks[index]),
                    slot.number,
                    slot.pid,
                    slot.host,
                )
            if not running:
                if stop is not None:
                    stop.wait(poll_s)
                continue
            done, _ = ray.wait(
                list(running), num_returns=1, timeout=None if stop is None else poll_s
            )
            if not done:
                continue
            slot = running.pop(done[0])
            index, slot.task = slot.task, None
            try:
                result = ray.get(done[0])
            except _worker_deaths(ray) as exc:
                attempts[index] += 1
                self._died(slot, tasks[index], attempts[index], exc)
                if attempts[index] > cluster.max_retries:
                    reason = f"its worker died {attempts[index]} times; last: {_death(exc)}"
                    on_result(index, self.lost(tasks[index], reason))
                else:
                    queue.appendleft(index)  # first in line for the next free worker
                ray.kill(slot.actor, no_restart=True)
                number = slot.number
                slots[slots.index(slot)] = slot = self._start(ray, actor, number)
                if stop is not None:
                    ray.get(slot.actor.prepare.remote())
            else:
                on_result(index, result)
            idle.append(slot)

    def _died(self, slot: _Slot, task: T, attempt: int, exc: Exception) -> None:
        logger.warning(
            "worker %d (pid %d on %s) died running %s (attempt %d): %s",
            slot.number,
            slot.pid,
            slot.host,
            self.label(task),
            attempt,
            _death(exc),
        )
        self.on_death(task)

    def _stop(self, ray: Any, slots: list[_Slot], tasks: Sequence[T]) -> None:
        """Kill the workers; once those that were running a task (an interrupt or an error
        ended the run) are gone, clean up after their tasks."""
        for slot in slots:
            ray.kill(slot.actor, no_restart=True)
        for slot in slots:
            if slot.task is not None:
                _wait_dead(ray, slot.actor)
                if slot.host == socket.gethostname():
                    _wait_exited(slot.pid)
                self.on_death(tasks[slot.task])


def _wait_dead(ray: Any, actor: Any, timeout_s: float = 30.0) -> None:
    """Return once a killed actor is gone (a call to it fails), or after ``timeout_s``, so
    nothing it was writing appears after the clean-up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.where.remote(), timeout=1.0)
        except ray.exceptions.GetTimeoutError:
            continue  # still finishing the call it was running when killed
        except ray.exceptions.RayError:
            return
        time.sleep(0.1)


def _wait_exited(pid: int, timeout_s: float = 30.0) -> None:
    """Return once process ``pid`` of this machine is gone, or after ``timeout_s``. Ray
    reports a killed actor dead before the system has ended its process, which may still
    write a temporary file in that moment; the clean-up must come after."""
    deadline = time.monotonic() + timeout_s
    while pid > 0 and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return
        except PermissionError:
            return  # a process of another user: not our worker any more
        if _zombie(pid):
            return  # ended, not yet reaped by its parent
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    """Whether process ``pid`` has ended and waits to be reaped (Linux; False elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def _salip_environment() -> dict[str, str]:
    """The driver's ``SALIP_*`` environment variables."""
    return {k: v for k, v in os.environ.items() if k.startswith("SALIP_")}


def _worker_deaths(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's exceptions for a task whose worker process or node went away."""
    errors = ray.exceptions
    return (
        errors.RayActorError,
        errors.WorkerCrashedError,
        errors.OutOfMemoryError,
        errors.NodeDiedError,
        errors.ObjectLostError,
    )


def _death(exc: Exception) -> str:
    """The first line of Ray's reason for a worker's death."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
