"""Starting and stopping the actors of a run.

`start_system` turns a recipe into running actors (rollout pool, reward scorers, learner
group) linked for weight sync; the drivers (`cluster/commands/train.py`, evaluation) only drive them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from concurrent.futures import Future, TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TypeVar

from cluster.startup.ray import connect_ray
from cluster.roles.learner_group import LearnerGroup
from cluster.startup.live_placement import RunPlan, plan_run
from cluster.recipe.placement import job_roles
from cluster.recipe import Recipe
from cluster.roles.recovery import Recovery
from cluster.roles.rollout_pool import RolloutPool, link_weights
from cluster.roles.scorer_pool import ScorerPool
from cluster.startup.specs import engine_spec, learner_spec, scorer_spec
from cluster.wire.errors import RunFailed
from cluster.wire.phases import PhaseClock


@dataclass
class System:
    """The running actors of a job; a job without rollouts (SFT without held-out accuracy) has
    no pool and no scorers."""

    learners: LearnerGroup | None  # None only while start_system is still starting the actors
    pool: RolloutPool | None = None
    scorers: ScorerPool | None = None
    tokenizer: object = None
    teacher: object = None  # a TeacherPool (cluster/roles/teacher_pool.py) when the job distils
    recovery: Recovery | None = None  # restarts of the pool's and the scorers' actors, for the metrics
    plan: RunPlan | None = None  # where each role's actors were placed
    startup: dict = field(default_factory=dict)  # seconds per start-up phase (start_system)
    learner_setup: dict = field(default_factory=dict)  # the learner phase's parts (LearnerGroup.setup_s)

    def placement_groups(self) -> dict[str, object]:
        """Each role's placement group (None for a role this job has not), for placement.json."""
        return {"rollout": self.pool.placement if self.pool else None,
                "learner": self.learners.placement if self.learners else None,
                "scorer": self.scorers.placement if self.scorers else None}

    def shutdown(self) -> None:
        for part in (self.learners, self.scorers, self.pool, self.teacher):
            if part is None:
                continue
            try:
                part.shutdown()
            except Exception as err:  # keep shutting the rest down
                print(f"[aha] shutdown of {type(part).__name__} failed: {err}")


def start_system(recipe: Recipe, model_path: str, tokenizer, job: str = "train", *,
                 total_steps: int | None = None) -> System:
    """Start Ray (or join the cluster) and the actors aha command `job` needs (`job_roles`),
    each pinned where the run's plan puts it; link weights. `aha distill` gets its teacher
    actors too; `aha sft` gets rollout workers and scorers only to measure held-out accuracy,
    and a learner schedule of `total_steps`.

    The roles start side by side: the engines and scorers boot in their own processes while
    the learner ranks set up, and the driver waits for them last. `System.startup` holds the
    seconds of each phase (also printed), what `bench/loop.py` reports as time to first step.
    """
    clock = PhaseClock()
    ray = connect_ray(recipe.cluster)
    clock.lap("ray")
    # Where every actor goes, on the cluster as it is; a plan that cannot fit is one line here.
    plan = plan_run(recipe, ray, job)
    roles = job_roles(recipe, job)
    cluster, timeout = recipe.cluster, recipe.cluster.timeout_s
    system = System(learners=None, tokenizer=tokenizer, recovery=Recovery(cluster.max_restarts), plan=plan)
    try:  # an actor that cannot start leaves the ones already started shut down, not orphaned
        if "rollout" in roles:
            system.pool = RolloutPool(engine_spec(recipe, model_path), recipe.rollout.num_workers,
                                      cpus_per_worker=cluster.rollout_cpus, gpus_per_worker=cluster.rollout_gpus,
                                      timeout_s=timeout, recovery=system.recovery, wait=False,
                                      health_timeout_s=cluster.health_timeout_s, nodes=plan.nodes_of("rollout"))
            system.scorers = ScorerPool(scorer_spec(recipe), recipe.reward.num_scorers,
                                        cpus_per_scorer=cluster.scorer_cpus, timeout_s=timeout, wait=False,
                                        recovery=system.recovery, nodes=plan.nodes_of("scorer"))
        if "teacher" in roles and recipe.distill.teacher:
            from cluster.startup.specs import teacher_spec
            from cluster.roles.teacher_pool import TeacherPool

            system.teacher = TeacherPool(teacher_spec(recipe), recipe.distill.num_teachers,
                                         cpus_per_teacher=cluster.teacher_cpus, gpus_per_teacher=cluster.teacher_gpus,
                                         timeout_s=timeout, nodes=plan.nodes_of("teacher"))
            clock.lap("teacher")
        system.learners = LearnerGroup(learner_spec(recipe, model_path, objective=_objective(recipe, job),
                                                    total_steps=total_steps),
                                       recipe.learner.num_ranks, cpus_per_rank=cluster.learner_cpus,
                                       gpus_per_rank=cluster.learner_gpus, timeout_s=timeout,
                                       nodes=plan.nodes_of("learner"))
        clock.lap("learner")
        system.learner_setup = system.learners.setup_s
        if system.pool is not None:
            system.pool.wait_started()
            clock.lap("engines")  # what was left of their start once the learner was up
            system.scorers.wait_started()
            link_weights(system.learners, system.pool, timeout)
            clock.lap("weight_link")
    except BaseException:
        system.shutdown()
        raise
    system.startup = clock.phases
    print(f"[aha] started in {sum(clock.phases.values()):.1f} s: "
          + ", ".join(f"{name} {seconds:.1f}" for name, seconds in clock.phases.items()), flush=True)
    return system


def _objective(recipe: Recipe, job: str) -> str:
    """The learner's objective: SFT's; the pure distillation loss (an objective of its own); or
    GRPO's loss, which the advantage form of distillation uses too."""
    if job == "sft":
        return "sft"
    return "distill" if recipe.distill.teacher and recipe.distill.loss == "kl" else "grpo"
