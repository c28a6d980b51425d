"""Fault injection: kill a real process of a role at a chosen moment of a chosen step.

For tests and for drills on a cluster before a long run. Off unless the environment variable
`AHA_CHAOS` is set, to a comma-separated list of `role@moment:step`:

    AHA_CHAOS="rollout@generate:2,scorer@generate:3,engine@push:4,hang@generate:5,learner@train:6,teacher@generate:7"

- `rollout`: rollout worker 0's actor process; `engine`: the vLLM engine processes inside it
  (the actor lives on and finds its engine dead), or, with the engine core in the worker's own
  process (`rollout.engine_core`), that process: the crash takes the worker with it; `hang`:
  rollout worker 0's actor process is stopped (SIGSTOP), not killed, so it hangs; `scorer`: reward scorer 0's actor process;
  `learner`: the last learner rank's process; `teacher`: teacher 0's actor process (`aha distill`).
- `generate`: as the step starts, its groups being sampled; `push`: while the step's weights
  are being broadcast; `train`: just before the optimizer step.

Each fault fires once. Processes get SIGKILL (`hang`: SIGSTOP): nothing gets to clean up, as
when a node is lost.
Only processes on the driver's node can be killed this way.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

ENV = "AHA_CHAOS"
MOMENTS = {"rollout": ("generate", "push"), "engine": ("generate", "push"), "hang": ("generate",),
           "scorer": ("generate",),
           "learner": ("generate", "train"), "teacher": ("generate",)}


class ChaosError(ValueError):
    """AHA_CHAOS cannot be read; the message is one line naming the bad entry."""


@dataclass
class Fault:
    role: str
    moment: str
    step: int
    fired: bool = False


def parse_faults(text: str) -> list[Fault]:
    """The faults of an AHA_CHAOS value; ChaosError naming the first entry that is not `role@moment:step`."""
    faults = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        role, _, rest = entry.partition("@")
        moment, _, step = rest.partition(":")
        if role not in MOMENTS or moment not in MOMENTS[role] or not step.isdigit() or int(step) < 1:
            known = "; ".join(f"{r}@{'|'.join(m)}" for r, m in MOMENTS.items())
            raise ChaosError(f"{ENV}: '{entry}' is not role@moment:step with a step >= 1 (known: {known})")
        faults.append(Fault(role, moment, int(step)))
    return faults


class Chaos:
    """The faults still to fire; `step` is set by the loop at the start of each step."""

    def __init__(self, faults: list[Fault]):
        self.faults, self.step = faults, 0

    @classmethod
    def from_env(cls) -> "Chaos":
        return cls(parse_faults(os.environ.get(ENV, "")))

    def at(self, moment: str, system) -> None:
        """Fire the faults due at `moment` of the current step on `system`'s actors."""
        for fault in self.faults:
            if not fault.fired and fault.moment == moment and fault.step == self.step:
                fault.fired = True
                pids = _pids(fault.role, system)
                how = "stopping" if fault.role == "hang" else "killing"
                print(f"[aha] chaos: {how} {fault.role} (pids {pids}) at {moment} of step {self.step}", flush=True)
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGSTOP if fault.role == "hang" else signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _pids(role: str, system) -> list[int]:
    import ray

    if role in ("rollout", "engine", "hang"):
        for attempt in range(3):  # the worker may have just been replaced (a failed probe): ask its successor
            worker = system.pool.workers[0]
            try:
                if role == "engine":
                    return ray.get(worker.engine_process_ids.remote(), timeout=60)
                return [ray.get(worker.process_ids.remote(), timeout=60)[0][0]]
            except ray.exceptions.RayActorError:
                if attempt == 2:
                    raise
                time.sleep(1.0)
    if role == "scorer":
        return [ray.get(system.scorers.scorers[0].process_ids.remote(), timeout=60)[0][0]]
    if role == "teacher":
        if system.teacher is None:
            return []  # not a distillation run: nothing to kill
        return [ray.get(system.teacher.teachers[0].pid.remote(), timeout=60)]
    return [ray.get(system.learners.ranks[-1].pid.remote(), timeout=60)]
