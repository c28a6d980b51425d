"""Surviving dead actors: which errors mean an actor is gone, each role's restart budget, and
what recovering cost (restarts, prompts re-queued, seconds), for the run's metrics.

A rollout worker, a reward scorer or a teacher that dies is replaced (cluster/roles/rollout_pool.py,
scorer_pool.py, teacher_pool.py), and a learner group that lost a rank is restarted from the last
checkpoint (cluster/run/scaffold.py), at most `cluster.max_restarts` times per role; past that, the
run stops with `RunInterrupted`, whose line the CLI completes with the command that resumes from
the last checkpoint.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from cluster.wire.errors import RunInterrupted

ROLES = ("rollout", "scorer", "teacher", "learner")
# Ray's errors for an actor whose process is gone, and the rollout worker's for an engine whose
# process is (EngineDied; vLLM's own EngineDeadError too, should one reach the driver as it is).
_DEATHS = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "EngineDied",
           "EngineDeadError"}


def is_death(err: BaseException) -> bool:
    """Whether `err` says an actor or the engine inside it died, rather than a bug or bad input.

    Ray re-raises a remote error as a class deriving from the original's, so an actor whose
    vLLM engine died raises something that is also an EngineDied.
    """
    names = {cls.__name__ for cls in type(err).__mro__}
    cause = getattr(err, "cause", None)
    if cause is not None:
        names |= {cls.__name__ for cls in type(cause).__mro__}
    return bool(names & _DEATHS)


def one_line(err: BaseException) -> str:
    """An error as `Class: first line of its text` (Ray's texts carry whole tracebacks)."""
    cause = getattr(err, "cause", None)
    cause = cause if isinstance(cause, BaseException) else err  # Ray's RayTaskError carries the remote one
    text = cause.args[0] if cause.args and isinstance(cause.args[0], str) else str(cause)
    lines = text.strip().splitlines()
    return f"{type(cause).__name__}: {lines[0][:200]}" if lines else type(cause).__name__


def resend_after_replacing(call, actors: list, index: int, replace: Callable[[], None],
                           send: Callable[[object], object], timeout_s: float) -> None:
    """Send `call` (a ticket with `.actor`, `.ref`, `.deadline`), whose actor `actors[index]` died
    or missed its deadline, again to that slot's actor, after `replace()`-ing it; unless another
    call already had it replaced since this one was sent: then it is only re-sent, not counted
    as a second death (which would kill the fresh replacement)."""
    if actors[index] is call.actor:
        replace()
    call.actor = actors[index]
    call.ref = send(call.actor)
    call.deadline = time.monotonic() + timeout_s


class Recovery:
    """The restart budget of each role and what recovering has cost so far.

    `allow_restart` is called before each replacement: within the budget it counts the restart,
    past it it raises RunInterrupted. `step_metrics` reports the counts and takes the per-step ones.
    """

    def __init__(self, max_restarts: int):
        self.max_restarts = max_restarts
        self.restarts: Counter = Counter()
        self._requeued = 0
        self._seconds = 0.0

    def allow_restart(self, role: str, what: str) -> None:
        if self.restarts[role] >= self.max_restarts:
            if not self.max_restarts:
                raise RunInterrupted(f"{what}; cluster.max_restarts = 0, so no {role} actor is replaced")
            raise RunInterrupted(f"{what}; the {self.max_restarts} {role} restarts that cluster.max_restarts allows "
                            "are used up")
        self.restarts[role] += 1
        print(f"[aha] {what}; replacing it ({role} restart {self.restarts[role]} of {self.max_restarts})", flush=True)

    def requeued(self, count: int) -> None:
        self._requeued += count

    def recovered(self, started: float, what: str) -> None:
        """A replacement is taking work: count the seconds since `started` (time.perf_counter)."""
        seconds = time.perf_counter() - started
        self._seconds += seconds
        print(f"[aha] {what} in {seconds:.1f} s", flush=True)

    def step_metrics(self) -> dict:
        """Restarts so far per role; prompts re-queued and seconds spent recovering since the last call."""
        metrics = {f"restarts/{role}": float(self.restarts[role]) for role in ROLES}
        metrics["recovery/prompts_requeued"] = float(self._requeued)
        metrics["time/recovery"] = self._seconds
        self._requeued, self._seconds = 0, 0.0
        return metrics
