"""The error a run stops with when something went wrong that the user can act on.

It lives here, beside the wire types, because both ends need it: a learner rank raises it
inside its Ray actor, and the CLI catches it on the driver to print its one line (exit 1)
instead of a traceback.
"""

from __future__ import annotations


class RunFailed(RuntimeError):
    """A run cannot go on, for a reason stated in one line that says what to do about it
    (a non-finite loss, gradient or weights: lower learner.lr, ...)."""


def original_failure(err: RunFailed) -> RunFailed:
    """`err` itself, or, when a Ray actor raised it, the original the driver's copy wraps.

    Ray re-raises a remote error as a class deriving from both `RayTaskError` and the
    original's class, whose text is the whole remote traceback; `.cause` is the original,
    whose text is the one line.
    """
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, RunFailed) else err


class RunInterrupted(RunFailed):
    """A run that cannot go on, but can resume from its last complete checkpoint, which is intact:
    an actor it cannot do without died (a learner rank, or a role past cluster.max_restarts),
    or a checkpoint could not be written. A driver that checkpoints fills in `checkpoint` (where
    the run would resume from; empty: none yet) and the CLI adds the command to run next."""

    checkpoint: str | None = None


class EngineDied(RuntimeError):
    """A rollout worker's vLLM engine process is gone (vLLM's EngineDeadError, same text).

    The worker raises this instead of vLLM's own class so that the driver can read the error
    without importing vLLM: unpickling vLLM's class imports vLLM and torch into the driver
    (measured 7.3 s on 2 cores) just to learn that a worker must be replaced.
    """
