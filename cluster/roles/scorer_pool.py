"""The reward scorers from the driver's side: M scorer actors, used round-robin.

Scoring is pure, so a scorer actor that dies or stops answering is replaced and the group it
was scoring is scored again on the replacement (at most cluster.max_restarts times a run).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

from actors.reward_scorer import RewardScorer, Score, ScorerSpec
from cluster.roles.calls import answered, get_all
from cluster.roles.bundles import RolePlacement, bundle_of
from cluster.roles.recovery import Recovery, is_death, one_line, resend_after_replacing


@dataclass
class ScoreTicket:
    """One group's scoring in flight: the Ray ref, which scorer has it (its index and the actor:
    a call sent to a scorer already replaced for another call is sent again, not counted as a
    second death), the call's arguments (to score it again) and when the driver stops waiting."""

    ref: object
    scorer: int
    actor: object
    group: tuple
    deadline: float


class ScorerPool:
    """M reward-scorer actors, used round-robin; every wait bounded, the dead replaced."""

    def __init__(self, spec: ScorerSpec, num_scorers: int, *, cpus_per_scorer: float, timeout_s: float,
                 recovery: Recovery | None = None, nodes: list[str] | None = None, wait: bool = True):
        import ray

        self._ray, self.timeout_s, self.spec = ray, timeout_s, spec
        self.recovery = recovery or Recovery(max_restarts=0)
        self._actor, self._cpus = ray.remote(RewardScorer), cpus_per_scorer
        self.placed = RolePlacement(ray, bundle_of(cpus_per_scorer, 0), num_scorers, nodes, timeout_s,
                                    "reward scorers")
        self.placement = self.placed.group  # placement.json reads it
        self.scorers = [self._launch(index) for index in range(num_scorers)]
        self._replacing = threading.Lock()
        self._starting = [s.worker_pids.remote() for s in self.scorers]
        self._turn = itertools.cycle(range(num_scorers))
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Wait (bounded) until every scorer's worker processes are up (see RolloutPool's)."""
        if self._starting:
            get_all(self._ray, self._starting, self.timeout_s, "reward scorer start")
            self._starting = []

    def _launch(self, index: int, where: dict | None = None):
        where = where or self.placed.options(index)
        return self._actor.options(num_cpus=self._cpus, **where).remote(self.spec)

    def score(self, texts: list[str], fields: dict, num_tokens: list[int]) -> list[Score]:
        """Score one group now (a few ms per completion); returns its list of Score."""
        return self.collect(self.submit(texts, fields, num_tokens))

    def submit(self, texts: list[str], fields: dict, num_tokens: list[int]) -> ScoreTicket:
        """Send one group to the next scorer and return at once; `collect` the scores. The
        ticket's `ref` is what `ray.wait` waits on, so the driver can wait on it beside others."""
        index = next(self._turn)
        actor = self.scorers[index]
        ref = actor.score_group.remote(texts, fields, num_tokens)
        return ScoreTicket(ref, index, actor, (texts, fields, num_tokens), time.monotonic() + self.timeout_s)

    def ready(self, ticket: ScoreTicket) -> bool:
        """Whether `collect` would return (or replace a dead scorer) without waiting."""
        return answered(self._ray, [ticket.ref]) or time.monotonic() >= ticket.deadline

    def collect(self, ticket: ScoreTicket) -> list[Score]:
        """The group's scores, waiting at most until the ticket's deadline. A scorer that died or
        missed it is replaced and the group scored again there (scoring is pure)."""
        ray = self._ray
        while True:
            done, _ = ray.wait([ticket.ref], num_returns=1, timeout=max(ticket.deadline - time.monotonic(), 0.0))
            try:
                if not done:
                    raise TimeoutError(f"reward scoring did not finish within {self.timeout_s:g} s (cluster.timeout_s)")
                return ray.get(ticket.ref)
            except Exception as err:
                # A remote TimeoutError is a RayTaskError, a reward's own failure is a Score:
                # only a death or the driver's own deadline means the actor is gone.
                if not (is_death(err) or type(err) is TimeoutError):
                    raise
                with self._replacing:  # the evaluation before RL collects from another thread
                    resend_after_replacing(ticket, self.scorers, ticket.scorer,
                                           lambda cause=err: self._replace(ticket.scorer, cause),
                                           lambda actor: actor.score_group.remote(*ticket.group), self.timeout_s)

    def _replace(self, index: int, cause: BaseException) -> None:
        started = time.perf_counter()
        self.recovery.allow_restart("scorer", f"reward scorer {index} died ({one_line(cause)})")
        self._ray.kill(self.scorers[index], no_restart=True)
        self.scorers[index] = self._launch(index, self.placed.for_replacement(index, f"reward scorer {index}"))
        get_all(self._ray, [self.scorers[index].worker_pids.remote()], self.timeout_s, "replacement scorer start")
        self.recovery.recovered(started, f"reward scorer {index} replaced")

    def shutdown(self) -> None:
        for scorer in self.scorers:
            self._ray.kill(scorer)
        self.placed.remove()
