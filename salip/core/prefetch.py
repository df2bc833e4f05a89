"""Run a producer one step ahead in a background thread, so CPU preparation of the next
slice batch overlaps the model work on the current one.

Hand-written rather than a ``torch.utils.data.DataLoader``: its workers are processes,
which would copy the 8-bit volume into each worker, and its thread-free mode does not
prefetch. The work overlapped (slice extraction, PIL resizing, numpy copies) mostly
releases the GIL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = [
    "prefetch",
]

T = TypeVar("T")
R = TypeVar("R")


def prefetch(items: Iterable[T], work: Callable[[T], R], depth: int = 2) -> Iterator[R]:
    """``work(item)`` for each item, in order, computed up to ``depth`` items ahead.

    Items are drawn from ``items`` in the calling thread; only ``work`` runs in the
    background thread. An exception in ``work`` is raised here, at that item. Leaving the
    loop early cancels what was not started and waits for what was.

    Args:
        items: the inputs (e.g. batches of slices).
        work: the preparation of one input (must be thread-safe).
        depth: results prepared ahead of the consumer (>= 1).
    """
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="salip-prefetch") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in source:
                pending.append(pool.submit(work, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
