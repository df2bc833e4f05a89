"""Wall-clock seconds per named stage of a run (the report's ``timings_s``)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

__all__ = [
    "StageTimer",
]


class StageTimer:
    """Accumulates wall-clock seconds per stage name.

    Args:
        listener: called as ``listener(stage, seconds)`` each time a stage's time is added
            (a service shows a running job's stages with it); it must be quick.
    """

    def __init__(self, listener: Callable[[str, dict[str, float]], None] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.listener = listener

    def add(self, stage: str, start: float) -> float:
        """Add ``now - start`` to ``stage``; return now."""
        now = time.perf_counter()
        self.seconds[stage] += now - start
        if self.listener is not None:
            self.listener(stage, self.seconds)
        return now
