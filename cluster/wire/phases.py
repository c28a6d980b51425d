"""Seconds per phase: of a start-up, in order (what a learner rank sends the driver with its
set-up, `setup_s`, and what the driver keeps of its own start, cluster/roles/system.py), and of
a step (`timed`)."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timed(timings: dict[str, float], key: str):
    """Add the seconds the block takes to `timings[key]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


class PhaseClock:
    """`lap(name)` adds the seconds since the last lap (or since this was made) to `phases[name]`."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now
