"""Starting and stopping the actors of a run, and the driver-side helpers the loop uses.

`start_system` turns a recipe into running actors (rollout pool, reward scorers, learner
group) linked for weight sync; the loop in `cluster/loop.py` only drives them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from actors.reward_scorer import RewardScorer, ScorerSpec
from actors.rollout_worker import engine_spec_from_recipe
from cluster.config import Recipe
from cluster.data import DataError, PromptRow, load_prompt_rows, render_prompt
from cluster.launch import connect_ray, get_all
from cluster.learner_group import LearnerGroup
from cluster.rollout_pool import RolloutPool, link_weights
from cluster.types import SamplingSpec
from learner.spec import learner_spec_from_recipe


class ScorerPool:
    """M reward-scorer actors, used round-robin; every wait bounded."""

    def __init__(self, recipe: Recipe):
        import ray

        reward, cluster = recipe.reward, recipe.cluster
        spec = ScorerSpec(weights=dict(reward.weights), num_workers=reward.workers_per_scorer,
                          timeout_s=reward.timeout_s, failure_reward=reward.failure_reward,
                          max_new_tokens=recipe.rollout.max_new_tokens,
                          overlong_buffer_tokens=reward.overlong_buffer_tokens,
                          overlong_penalty=reward.overlong_penalty)
        self._ray, self.timeout_s = ray, cluster.timeout_s
        actor = ray.remote(RewardScorer).options(num_cpus=cluster.scorer_cpus)
        self.scorers = [actor.remote(spec) for _ in range(reward.num_scorers)]
        get_all(ray, [s.worker_pids.remote() for s in self.scorers], self.timeout_s, "reward scorer start")
        self._turn = itertools.cycle(self.scorers)

    def score(self, texts: list[str], fields: dict, num_tokens: list[int]):
        """Score one group now (a few ms per completion); returns its list of Score."""
        ref = next(self._turn).score_group.remote(texts, fields, num_tokens)
        return get_all(self._ray, [ref], self.timeout_s, "reward scoring")[0]

    def shutdown(self) -> None:
        for scorer in self.scorers:
            self._ray.kill(scorer)


@dataclass
class System:
    pool: RolloutPool
    scorers: ScorerPool
    learners: LearnerGroup
    tokenizer: object

    def shutdown(self) -> None:
        for part in (self.learners, self.scorers, self.pool):
            try:
                part.shutdown()
            except Exception as err:  # keep shutting the rest down
                print(f"[aha] shutdown of {type(part).__name__} failed: {err}")


def start_system(recipe: Recipe, model_path: str, tokenizer) -> System:
    """Start Ray (or join the cluster) and every actor of the run; link weights."""
    connect_ray(recipe.cluster)
    cluster, timeout = recipe.cluster, recipe.cluster.timeout_s
    engine = replace(engine_spec_from_recipe(recipe), model_path=model_path)
    pool = RolloutPool(engine, recipe.rollout.num_workers, cpus_per_worker=cluster.rollout_cpus,
                       gpus_per_worker=cluster.rollout_gpus, timeout_s=timeout)
    scorers = ScorerPool(recipe)
    learners = LearnerGroup(learner_spec_from_recipe(recipe, model_path), recipe.learner.num_ranks,
                            cpus_per_rank=cluster.learner_cpus, gpus_per_rank=cluster.learner_gpus,
                            timeout_s=timeout)
    link_weights(learners, pool, timeout)
    return System(pool=pool, scorers=scorers, learners=learners, tokenizer=tokenizer)


def load_rows(recipe: Recipe, path: str) -> list[PromptRow]:
    data = recipe.data
    return load_prompt_rows(path, prompt_column=data.prompt_column, columns=data.columns or None,
                            file_format=data.file_format)


def encode_prompts(recipe: Recipe, tokenizer, rows: list[PromptRow]) -> list[list[int]]:
    """Template and tokenize prompts; a prompt over `data.max_prompt_tokens` is an error."""
    data = recipe.data
    encoded = []
    for row in rows:
        text = render_prompt(row.prompt, data.template, tokenizer=tokenizer, system_prompt=data.system_prompt)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > data.max_prompt_tokens:
            raise DataError(f"data file '{data.train_path}': row {row.index} is {len(ids)} tokens after the "
                            f"template, over data.max_prompt_tokens={data.max_prompt_tokens}")
        encoded.append(ids)
    return encoded


def sampling_of(recipe: Recipe, *, seed: int | None) -> SamplingSpec:
    rollout = recipe.rollout
    return SamplingSpec(group_size=rollout.group_size, max_new_tokens=rollout.max_new_tokens,
                        temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
                        stop=rollout.stop, seed=seed)
