"""The one factory of a job's roles: every actor built from the recipe and the placement plan.

`start_system` turns a recipe into running roles (rollout pool, reward scorers, learner group,
and the teacher when distilling), each pinned where the run's plan puts it and recorded in
placement.json, with the weight path between learner and engines linked. `aha eval` and
`aha generate`, which start engines and scorers without a learner, build them with the same
`start_rollout_pool` and `start_scorers`. The commands only drive what this starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.recipe import Recipe
from cluster.recipe.placement import job_roles
from cluster.roles.bundles import NodeLost, alive_nodes
from cluster.roles.learner_group import LearnerGroup
from cluster.roles.recovery import Recovery
from cluster.roles.rollout_pool import RolloutPool
from cluster.roles.scorer_pool import ScorerPool
from cluster.roles.teacher_pool import TeacherPool
from cluster.roles.weight_sync import WeightSync
from cluster.startup.live_placement import RunPlan, plan_run
from cluster.startup.ray import connect_ray
from cluster.startup.specs import engine_spec, learner_spec, scorer_spec, teacher_spec
from cluster.wire.phases import PhaseClock


@dataclass
class System:
    """The running roles of a job; a job without rollouts (SFT without held-out accuracy) has
    no pool, no scorers and no weight sync."""

    learners: LearnerGroup | None  # None only while start_system is still starting the actors
    pool: RolloutPool | None = None
    scorers: ScorerPool | None = None
    weights: WeightSync | None = None  # the learner -> engines weight path, and the engines' version
    tokenizer: object = None
    teacher: object = None  # a TeacherPool (cluster/roles/teacher_pool.py) when the job distils
    recovery: Recovery | None = None  # restarts of the roles' actors, for the metrics
    plan: RunPlan | None = None  # where each role's actors were placed
    startup: dict = field(default_factory=dict)  # seconds per start-up phase (start_system)
    learner_setup: dict = field(default_factory=dict)  # the learner phase's parts (LearnerGroup.setup_s)
    start_learners: object = None  # (nodes) -> a new LearnerGroup like the first: what restart_learners calls

    def placement_groups(self) -> dict[str, object]:
        """Each role's placement group (None for a role this job has not), for placement.json."""
        return {role: part.placement if part is not None else None
                for role, part in (("rollout", self.pool), ("learner", self.learners), ("scorer", self.scorers),
                                   ("teacher", self.teacher))}

    def restart_learners(self) -> None:
        """A new learner group in place of one that lost a rank (a DeepSpeed job cannot take a
        new rank): the old ranks ended, the new ones set up from the base model where the plan put
        them, or, where a planned node is lost (now, or while the new group is being placed: Ray
        takes a few seconds to mark a node dead), wherever the surviving nodes have room; then the
        weight path to the engines linked to them. The caller loads the checkpoint and pushes it."""
        import ray

        self.learners.shutdown()
        nodes = self.plan.nodes_of("learner")
        lost = sorted(set(nodes) - alive_nodes(ray))
        try:
            if lost:
                raise NodeLost(lost, "learner ranks")
            self.learners = self.start_learners(nodes)
        except NodeLost as gone:
            print(f"[aha] node {', '.join(n[:12] for n in gone.nodes)} is lost: the learner ranks are placed anew "
                  "on the surviving nodes", flush=True)
            self.learners = self.start_learners(None)
        if self.weights is not None:
            self.weights.learners = self.learners
            self.weights.link()

    def shutdown(self) -> None:
        for part in (self.learners, self.scorers, self.pool, self.teacher):
            if part is None:
                continue
            try:
                part.shutdown()
            except Exception as err:  # keep shutting the rest down
                print(f"[aha] shutdown of {type(part).__name__} failed: {err}")


def start_rollout_pool(recipe: Recipe, model_path: str, nodes: list[str], recovery: Recovery) -> RolloutPool:
    """The rollout workers serving `model_path`, on `nodes`; not waited for (`wait_started`)."""
    cluster = recipe.cluster
    return RolloutPool(engine_spec(recipe, model_path), recipe.rollout.num_workers,
                       cpus_per_worker=cluster.rollout_cpus, gpus_per_worker=cluster.rollout_gpus,
                       timeout_s=cluster.timeout_s, recovery=recovery, wait=False,
                       health_timeout_s=cluster.health_timeout_s, nodes=nodes)


def start_scorers(recipe: Recipe, plan: RunPlan, recovery: Recovery) -> ScorerPool:
    """The reward scorers, where the plan puts them; not waited for (`wait_started`)."""
    cluster = recipe.cluster
    return ScorerPool(scorer_spec(recipe), recipe.reward.num_scorers, cpus_per_scorer=cluster.scorer_cpus,
                      timeout_s=cluster.timeout_s, wait=False, recovery=recovery, nodes=plan.nodes_of("scorer"))


def start_teacher(recipe: Recipe, plan: RunPlan, recovery: Recovery):
    """The frozen teachers of `aha distill`, where the plan puts them; waited for (they are few)."""
    cluster = recipe.cluster
    return TeacherPool(teacher_spec(recipe), recipe.distill.num_teachers, cpus_per_teacher=cluster.teacher_cpus,
                       gpus_per_teacher=cluster.teacher_gpus, timeout_s=cluster.timeout_s,
                       nodes=plan.nodes_of("teacher"), recovery=recovery)


def start_learners(recipe: Recipe, model_path: str, nodes: list[str] | None, job: str,
                   total_steps: int | None) -> LearnerGroup:
    """The learner ranks (one DeepSpeed job) with the objective of `job`, set up, rank i on
    `nodes[i]` (None: wherever they fit)."""
    cluster = recipe.cluster
    spec = learner_spec(recipe, model_path, objective=learner_objective(recipe, job), total_steps=total_steps)
    return LearnerGroup(spec, recipe.learner.num_ranks, cpus_per_rank=cluster.learner_cpus,
                        gpus_per_rank=cluster.learner_gpus, timeout_s=cluster.timeout_s,
                        nodes=nodes)


def start_system(recipe: Recipe, model_path: str, tokenizer, job: str = "train", *,
                 total_steps: int | None = None) -> System:
    """Start Ray (or join the cluster) and the roles aha command `job` needs (`job_roles`),
    each pinned where the run's plan puts it; link weights. `aha distill` gets its teacher
    too; `aha sft` gets rollout workers and scorers only to measure held-out accuracy, and a
    learner schedule of `total_steps`.

    The roles start side by side: the engines and scorers boot in their own processes while
    the learner ranks set up, and the driver waits for them last. `System.startup` holds the
    seconds of each phase (also printed), what `bench/loop.py` reports as time to first step.
    """
    import ray

    clock = PhaseClock()
    joined_before = ray.is_initialized()  # Ray started beside the inputs: its seconds are the caller's
    connect_ray(recipe.cluster)
    clock.lap("ray")
    plan = plan_run(recipe, ray, job)  # on the cluster as it is; a plan that cannot fit is one line here
    roles = job_roles(recipe, job)
    system = System(learners=None, tokenizer=tokenizer, recovery=Recovery(recipe.cluster.max_restarts), plan=plan)
    try:  # a role that cannot start leaves the ones already started shut down, not orphaned
        if "rollout" in roles:
            system.pool = start_rollout_pool(recipe, model_path, plan.nodes_of("rollout"), system.recovery)
            system.scorers = start_scorers(recipe, plan, system.recovery)
        if "teacher" in roles and recipe.distill.teacher:
            system.teacher = start_teacher(recipe, plan, system.recovery)
            clock.lap("teacher")
        system.start_learners = lambda nodes: start_learners(recipe, model_path, nodes, job, total_steps)
        system.learners = system.start_learners(plan.nodes_of("learner"))
        clock.lap("learner")
        system.learner_setup = system.learners.setup_s
        if system.pool is not None:
            system.pool.wait_started()
            clock.lap("engines")  # what was left of their start once the learner was up
            system.scorers.wait_started()
            system.weights = WeightSync(system.learners, system.pool, recipe.cluster.timeout_s)
            system.weights.link()
            clock.lap("weight_link")
    except BaseException:
        system.shutdown()
        raise
    system.startup = clock.phases
    shown = {name: s for name, s in clock.phases.items() if not (name == "ray" and joined_before)}
    print(f"[aha] {'roles ' if joined_before else ''}started in {sum(shown.values()):.1f} s: "
          + ", ".join(f"{name} {seconds:.1f}" for name, seconds in shown.items()), flush=True)
    return system


def learner_objective(recipe: Recipe, job: str) -> str:
    """The learner's registered objective (learner/objectives.py): SFT's; the pure distillation
    loss; or GRPO's policy loss, which the advantage form of distillation uses too."""
    if job == "sft":
        return "sft"
    return "distill" if recipe.distill.teacher and recipe.distill.loss == "kl" else "grpo"
