"""The reward scorers from the driver's side: M scorer actors, used round-robin."""

from __future__ import annotations

import itertools

from actors.reward_scorer import RewardScorer, Score, ScorerSpec
from cluster.launch import get_all


class ScorerPool:
    """M reward-scorer actors, used round-robin; every wait bounded."""

    def __init__(self, spec: ScorerSpec, num_scorers: int, *, cpus_per_scorer: float, timeout_s: float):
        import ray

        self._ray, self.timeout_s = ray, timeout_s
        actor = ray.remote(RewardScorer).options(num_cpus=cpus_per_scorer)
        self.scorers = [actor.remote(spec) for _ in range(num_scorers)]
        get_all(ray, [s.worker_pids.remote() for s in self.scorers], self.timeout_s, "reward scorer start")
        self._turn = itertools.cycle(self.scorers)

    def score(self, texts: list[str], fields: dict, num_tokens: list[int]) -> list[Score]:
        """Score one group now (a few ms per completion); returns its list of Score."""
        ref = next(self._turn).score_group.remote(texts, fields, num_tokens)
        return get_all(self._ray, [ref], self.timeout_s, "reward scoring")[0]

    def shutdown(self) -> None:
        for scorer in self.scorers:
            self._ray.kill(scorer)
