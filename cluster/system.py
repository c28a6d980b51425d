"""Starting and stopping the actors of a run.

`start_system` turns a recipe into running actors (rollout pool, reward scorers, learner
group) linked for weight sync; the drivers (`cluster/loop.py`, evaluation) only drive them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.launch import connect_ray
from cluster.learner_group import LearnerGroup
from cluster.placement_plan import RunPlan, plan_run
from cluster.recipe import Recipe
from cluster.recovery import Recovery
from cluster.rollout_pool import RolloutPool, link_weights
from cluster.scorer_pool import ScorerPool
from cluster.specs import engine_spec, learner_spec, scorer_spec


@dataclass
class System:
    """The running actors of a job; a job without rollouts (SFT without held-out accuracy) has
    no pool and no scorers."""

    learners: LearnerGroup
    pool: RolloutPool | None = None
    scorers: ScorerPool | None = None
    tokenizer: object = None
    teacher: object = None  # a TeacherPool (cluster/teacher_pool.py) when the job distils
    recovery: Recovery | None = None  # restarts of the pool's and the scorers' actors, for the metrics
    plan: RunPlan | None = None  # where each role's actors were placed

    def shutdown(self) -> None:
        for part in (self.learners, self.scorers, self.pool, self.teacher):
            if part is None:
                continue
            try:
                part.shutdown()
            except Exception as err:  # keep shutting the rest down
                print(f"[aha] shutdown of {type(part).__name__} failed: {err}")


def start_system(recipe: Recipe, model_path: str, tokenizer) -> System:
    """Start Ray (or join the cluster) and every actor of the run; link weights. A recipe with
    a distill.teacher gets its teacher actors too (`aha distill`)."""
    ray = connect_ray(recipe.cluster)
    # Where every actor goes, on the cluster as it is; a plan that cannot fit is one line here.
    plan = plan_run(recipe, ray)
    cluster, timeout = recipe.cluster, recipe.cluster.timeout_s
    recovery = Recovery(cluster.max_restarts)
    pool = RolloutPool(engine_spec(recipe, model_path), recipe.rollout.num_workers,
                       cpus_per_worker=cluster.rollout_cpus, gpus_per_worker=cluster.rollout_gpus, timeout_s=timeout,
                       recovery=recovery, health_timeout_s=cluster.health_timeout_s, nodes=plan.nodes_of("rollout"))
    scorers = ScorerPool(scorer_spec(recipe), recipe.reward.num_scorers, cpus_per_scorer=cluster.scorer_cpus,
                         timeout_s=timeout, recovery=recovery, nodes=plan.nodes_of("scorer"))
    teacher = None
    if recipe.distill.teacher:
        from cluster.specs import teacher_spec
        from cluster.teacher_pool import TeacherPool

        teacher = TeacherPool(teacher_spec(recipe), recipe.distill.num_teachers, cpus_per_teacher=cluster.teacher_cpus,
                              gpus_per_teacher=cluster.teacher_gpus, timeout_s=timeout, nodes=plan.nodes_of("teacher"))
    # The pure distillation loss is an objective of its own; the advantage form is GRPO's loss.
    objective = "distill" if recipe.distill.teacher and recipe.distill.loss == "kl" else "grpo"
    learners = LearnerGroup(learner_spec(recipe, model_path, objective=objective), recipe.learner.num_ranks,
                            cpus_per_rank=cluster.learner_cpus, gpus_per_rank=cluster.learner_gpus, timeout_s=timeout,
                            nodes=plan.nodes_of("learner"))
    link_weights(learners, pool, timeout)
    return System(pool=pool, scorers=scorers, learners=learners, tokenizer=tokenizer, teacher=teacher,
                  recovery=recovery, plan=plan)
