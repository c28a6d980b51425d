"""Starting and stopping the actors of a run.

`start_system` turns a recipe into running actors (rollout pool, reward scorers, learner
group) linked for weight sync; the drivers (`cluster/loop.py`, evaluation) only drive them.
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

from cluster.launch import connect_ray
from cluster.learner_group import LearnerGroup
from cluster.placement_plan import RunPlan, plan_run
from cluster.recipe.placement import job_roles
from cluster.recipe import Recipe
from cluster.recovery import Recovery
from cluster.rollout_pool import RolloutPool, link_weights
from cluster.scorer_pool import ScorerPool
from cluster.specs import engine_spec, learner_spec, scorer_spec
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
    teacher: object = None  # a TeacherPool (cluster/teacher_pool.py) when the job distils
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
            from cluster.specs import teacher_spec
            from cluster.teacher_pool import TeacherPool

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


Prepared = TypeVar("Prepared")


def prepare_while_ray_starts(recipe: Recipe, prepare: Callable[[], Prepared]) -> tuple[Prepared, float]:
    """`prepare()` (the driver's own inputs: loading the tokenizer, checking the prompts) in a
    thread while Ray starts (or joins the cluster) here; returns what it returned and the
    seconds Ray took. The two overlap well: importing transformers is most of the inputs'
    time and holds one core, while Ray's start is mostly waiting for its own processes.

    A mistake in the inputs is still its one line, at about the time it came before: the local
    Ray this started is shut down again first, and the lines Ray's start logged are dropped
    with it (they are shown, late, when the inputs are good): nothing of the job has started yet.
    Inputs still loading `cluster.timeout_s` after the start are a RunFailed in one line, the
    same way (the thread is a daemon: it cannot keep the process alive).
    """
    import ray

    joined_already = ray.is_initialized()
    started = time.perf_counter()
    preparing = _in_daemon_thread(prepare)
    ray_error = None
    with _held_back(logging.getLogger("ray")) as ray_lines:
        try:
            connect_ray(recipe.cluster)
        except Exception as err:  # reported after the inputs' own error, which is the user's to fix first
            ray_error = err
    ray_s = time.perf_counter() - started
    try:  # the inputs, bounded like any other wait: a tokenizer load that hangs is an error, not a hang
        failure = preparing.exception(timeout=max(0.0, recipe.cluster.timeout_s - ray_s))
    except FutureTimeout:
        failure = RunFailed(f"loading the inputs (tokenizer, prompt or trace checks) took over cluster.timeout_s = "
                            f"{recipe.cluster.timeout_s:g} s; is model.path on a slow or unreachable store?")
    if failure is not None:
        if not joined_already and ray.is_initialized():
            ray.shutdown()
        raise failure
    ray_lines.show()
    if ray_error is not None:
        raise ray_error
    return preparing.result(), ray_s


def _in_daemon_thread(work: Callable[[], Prepared]) -> Future:
    """`work()` in a daemon thread; its future. Daemon, so that a call that never returns does
    not keep the process alive after the driver has given up on it."""
    future: Future = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(work())
        except BaseException as err:  # handed to whoever waits on the future
            future.set_exception(err)

    threading.Thread(target=run, name="aha-inputs", daemon=True).start()
    return future


class _HeldBack(logging.Filter):
    """Keeps a logger's records from its handlers until `show`."""

    def __init__(self, handlers: list[logging.Handler]):
        super().__init__()
        self.handlers, self.records = handlers, []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def show(self) -> None:
        for record in self.records:
            for handler in self.handlers:
                handler.handle(record)
        self.records = []


@contextmanager
def _held_back(logger: logging.Logger):
    """While the block runs, what reaches `logger`'s handlers is held; `show()` it afterwards."""
    held = _HeldBack(list(logger.handlers))
    for handler in held.handlers:
        handler.addFilter(held)
    try:
        yield held
    finally:
        for handler in held.handlers:
            handler.removeFilter(held)


def _objective(recipe: Recipe, job: str) -> str:
    """The learner's objective: SFT's; the pure distillation loss (an objective of its own); or
    GRPO's loss, which the advantage form of distillation uses too."""
    if job == "sft":
        return "sft"
    return "distill" if recipe.distill.teacher and recipe.distill.loss == "kl" else "grpo"
