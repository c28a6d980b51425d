"""Seconds per phase of a start-up, in order: the driver's (cluster/system.py) and each learner rank's."""

from __future__ import annotations

import time


class PhaseClock:
    """`lap(name)` adds the seconds since the last lap (or since this was made) to `phases[name]`."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self._last
        self._last = now
