"""The reward scorers from the driver's side: M scorer actors, used round-robin.

Scoring is pure, so a scorer actor that dies or stops answering is replaced and the group it
was scoring is scored again on the replacement (at most cluster.max_restarts times a run).
"""

from __future__ import annotations

import itertools
import time

from actors.reward_scorer import RewardScorer, Score, ScorerSpec
from cluster.launch import get_all
from cluster.placement_plan import label_selectors
from cluster.recovery import Recovery, is_death, one_line


class ScorerPool:
    """M reward-scorer actors, used round-robin; every wait bounded, the dead replaced."""

    def __init__(self, spec: ScorerSpec, num_scorers: int, *, cpus_per_scorer: float, timeout_s: float,
                 recovery: Recovery | None = None, nodes: list[str] | None = None):
        import ray

        self._ray, self.timeout_s, self.spec = ray, timeout_s, spec
        self.recovery = recovery or Recovery(max_restarts=0)
        self._actor, self._cpus, self.placement = ray.remote(RewardScorer), cpus_per_scorer, None
        if nodes:  # the run's plan (cluster/placement_plan.py): scorer i's bundle on node nodes[i]
            from ray.util.placement_group import placement_group

            self.placement = placement_group([{"CPU": cpus_per_scorer} for _ in range(num_scorers)],
                                             strategy="PACK", bundle_label_selector=label_selectors(nodes))
            get_all(ray, [self.placement.ready()], timeout_s, f"placing {num_scorers} reward scorers")
        self.scorers = [self._launch(index) for index in range(num_scorers)]
        get_all(ray, [s.worker_pids.remote() for s in self.scorers], self.timeout_s, "reward scorer start")
        self._turn = itertools.cycle(range(num_scorers))

    def _launch(self, index: int):
        if self.placement is None:
            return self._actor.options(num_cpus=self._cpus).remote(self.spec)
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self.placement, index)
        return self._actor.options(num_cpus=self._cpus, scheduling_strategy=strategy).remote(self.spec)

    def score(self, texts: list[str], fields: dict, num_tokens: list[int]) -> list[Score]:
        """Score one group now (a few ms per completion); returns its list of Score."""
        index = next(self._turn)
        while True:
            ref = self.scorers[index].score_group.remote(texts, fields, num_tokens)
            try:
                return get_all(self._ray, [ref], self.timeout_s, "reward scoring")[0]
            except Exception as err:
                # A remote TimeoutError is a RayTaskError, a reward's own failure is a Score:
                # only a death or the driver's own deadline means the actor is gone.
                if not (is_death(err) or type(err) is TimeoutError):
                    raise
                self._replace(index, err)

    def _replace(self, index: int, cause: BaseException) -> None:
        started = time.perf_counter()
        self.recovery.allow_restart("scorer", f"reward scorer {index} died ({one_line(cause)})")
        self._ray.kill(self.scorers[index], no_restart=True)
        self.scorers[index] = self._launch(index)
        get_all(self._ray, [self.scorers[index].worker_pids.remote()], self.timeout_s, "replacement scorer start")
        self.recovery.recovered(started, f"reward scorer {index} replaced")

    def shutdown(self) -> None:
        for scorer in self.scorers:
            self._ray.kill(scorer)
        if self.placement is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.placement)
