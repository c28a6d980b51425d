"""`aha train`: R1-Zero style GRPO, and the loop `aha distill` runs with a teacher.

`grpo_step` is one step, top to bottom: sample -> score -> take into the step -> learn ->
optimizer step -> push weights -> record. Groups stream: each finished group goes to the
scorers at once and, scored and turned into group-relative advantages, is taken into the step
(or dropped: too stale, or flat under dynamic sampling, and replaced by a fresh prompt);
whenever the learner is free it takes every group waiting in one forward/backward call, while
the rest of the step is still generating and scoring. The optimizer steps once the step's
groups are all in. With `algorithm.max_staleness = s >= 1` the next `s` steps' prompts are
already generating while the learner trains (async mode). The driver waits on one thing at a
time, in one place: `GroupStream.next_event`, bounded by cluster.timeout_s.

`train` is the run around the steps: the checks, the inputs, and the scaffold shared with
`aha sft` (cluster/run/scaffold.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cluster.inputs.data import PromptSampler
from cluster.inputs.prepare import prepare_data, prepare_model
from cluster.inputs.prompts import load_rows
from cluster.output.eval_metrics import reward_failure_warnings, reward_time_warnings
from cluster.output.run_log import summary_line
from cluster.recipe import Recipe, RecipeError
from cluster.roles.evaluation import EvaluationBesideFirstStep, evaluate_during_run
from cluster.roles.intake import LearnerFeed, StepIntake, scored_group
from cluster.roles.prompt_feed import PromptFeed
from cluster.roles.system import System, start_system
from cluster.roles.scoring import ScoresInFlight
from cluster.run.chaos import Chaos
from cluster.run.resume_point import train_data_sha256
from cluster.run.scaffold import TrainingRun, claimed_run
from cluster.run.step_record import rollout_rows, step_metrics
from cluster.startup.preflight import (check_before_start, check_prepared, load_tokenizer, print_warnings,
                                       require_prompt_file)
from cluster.startup.ray import prepare_while_roles_start
from cluster.startup.specs import sampling_spec
from cluster.wire.phases import timed


@dataclass
class Trainer:
    """What every step of a run drives: the recipe, the running roles, the prompt feed, the
    teacher's scoring when distilling, fault injection, and the held-out rows."""

    recipe: Recipe
    run: TrainingRun
    system: System
    prompts: PromptFeed
    teacher: object  # a TeacherPool (cluster/roles/teacher_pool.py) when distilling, else None
    chaos: Chaos
    tokenizer: object
    eval_rows: list
    startup: dict  # seconds per start-up phase: logged with the first step, then emptied
    before_rl: EvaluationBesideFirstStep | None = None  # the evaluation before RL, beside step 1

    def log_evaluation_before_rl(self) -> None:
        """Wait for the evaluation before RL and log it as step 0: before the first weight push."""
        if self.before_rl is None:
            return
        (before, seconds), self.before_rl = self.before_rl.result(), None
        self.run.log.log_step(0, before)
        self.startup["startup/first_evaluation_beside_step_1"] = seconds
        self.run.say(f"[aha] held-out accuracy before RL: {before['eval/accuracy']:.3f} "
                     f"on {before['eval/num_prompts']:.0f} problems")


def grpo_step(step: int, t: Trainer) -> dict:
    """One step, start to end; returns its metrics (already recorded)."""
    recipe, system, started = t.recipe, t.system, time.perf_counter()
    timings = {"generate": 0.0, "score": 0.0, "train": 0.0}
    batch = t.prompts.next_batch()  # sample: this step's prompts generating (async: already were)
    intake = StepIntake(wanted=recipe.rollout.prompts_per_step, max_dropped=4 * recipe.rollout.prompts_per_step,
                        max_staleness=recipe.algorithm.max_staleness,
                        dynamic_sampling=recipe.algorithm.dynamic_sampling)
    scoring = ScoresInFlight(system.scorers, t.teacher, timings)
    learning = LearnerFeed(system.learners, recipe.learner.num_ranks)
    t.chaos.at("generate", system)  # fault injection, while this step's groups are being sampled
    while not intake.full:
        with timed(timings, "generate"):  # waiting for a group, a score or the learner
            event = batch.stream.next_event(also=[*scoring.refs(), *learning.refs()])
        if event.group is not None:  # score: a finished group goes to the scorers at once
            index, samples = event.group
            scoring.submit(batch.rows[index], batch.rows[index].fields, samples)
        for scored in scoring.take_ready():  # take into the step, or drop and draw a replacement
            group = scored_group(scored, recipe.algorithm.estimator, recipe.distill)
            if not intake.offer(group, system.weights.version or 0, step):
                t.prompts.replace_dropped(batch)
        idle = batch.stream.ended and not scoring.pending  # nothing left to wait for but the learner
        with timed(timings, "train"):  # learn: forward/backward on what is waiting, if the learner is free
            learning.feed(intake, idle=idle)
        if idle and not learning.call and not intake.full:
            raise RuntimeError(f"step {step}: the rollout stream ended after {len(intake.accepted)} groups")
    with timed(timings, "train"):
        learning.finish_step(intake)
    if recipe.rollout.sleep_between_steps:
        system.pool.sleep()  # free the engines' GPU memory for the optimizer step (no-op on CPU)
    t.chaos.at("train", system)  # fault injection, before the optimizer step
    with timed(timings, "train"):
        learned = system.learners.step()  # optimizer step
    t.log_evaluation_before_rl()  # it samples on the weights this push replaces
    with timed(timings, "sync"):
        if recipe.rollout.sleep_between_steps:
            system.pool.wake_up()
        system.weights.push(learned["weight_version"])  # push: every engine on the new weights
    timings["step"] = time.perf_counter() - started
    metrics = {**step_metrics(recipe, intake, learned, timings), **system.recovery.step_metrics()}
    record_step(step, t, metrics, intake)
    return metrics


def record_step(step: int, t: Trainer, metrics: dict, intake: StepIntake) -> None:
    """Held-out accuracy when due, then metrics.jsonl, rollouts/, the progress line."""
    recipe, run = t.recipe, t.run
    metrics.update(t.startup)
    t.startup = {}
    failures = [f for g in intake.accepted for f in g.failures]
    for warning in [*reward_failure_warnings(step, failures), *reward_time_warnings(step, metrics)]:
        run.say(warning)
    if t.eval_rows and (step == recipe.run.steps or (recipe.eval.every and step % recipe.eval.every == 0)):
        metrics.update(evaluate_during_run(t.system.pool, t.system.scorers, t.tokenizer, recipe, t.eval_rows,
                                           run.out, step))
        print(f"[aha] held-out accuracy after step {step}: {metrics['eval/accuracy']:.3f}", flush=True)
    run.record(step, metrics, summary_line(metrics))
    run.log.write_rollouts(step, rollout_rows(step, intake.accepted))
    if step % recipe.run.log_every == 0 or step == recipe.run.steps:
        run.say(f"[aha] step {step}/{recipe.run.steps} reward {metrics['reward_mean']:.3f} "
                f"acc {metrics['accuracy']:.3f} len {metrics['response_length_mean']:.1f} "
                f"{metrics['time/step']:.1f}s")


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, distilling: bool = False) -> Path:
    """Run `recipe` to `run.steps`; returns the output directory. With `resume`, continue the
    run there from its newest complete checkpoint (same data order and weight version); with
    `overwrite`, start afresh even where an earlier run left checkpoints. `distilling`: the
    recipe's distill.teacher grades every sampled token (`aha distill`, cluster/commands/distill.py)."""
    if recipe.distill.teacher and not distilling:
        raise RecipeError("distill.teacher", "is set, so this recipe distils: run it with aha distill (or set "
                          "distill.teacher = \"\" for GRPO)")
    chaos = Chaos.from_env()  # fault injection for tests and drills; off unless AHA_CHAOS is set
    require_prompt_file(recipe)
    warnings = check_before_start(recipe)  # before the directory is claimed: a mistake leaves nothing
    with claimed_run(recipe, resume=resume, overwrite=overwrite) as run_dir:
        stage = "distillation" if recipe.distill.teacher else "RL"
        with TrainingRun(recipe, run_dir, stage=stage, resume=resume) as run:
            return _train(recipe, run, warnings, chaos)


def _train(recipe: Recipe, run: TrainingRun, warnings: list[str], chaos: Chaos) -> Path:
    """Inputs, roles, the evaluation before RL, the steps, `final/`."""
    begun = time.perf_counter()
    prepare_data(recipe)  # first: the held-out prompts are kept out of the training data
    run.check_data(recipe.data.train_path, train_data_sha256(recipe))
    model_path = str(prepare_model(recipe))

    def load_and_check():  # the last checks: beside Ray's start and then the roles'
        tokenizer = load_tokenizer(recipe, model_path)
        return tokenizer, check_prepared(recipe, model_path, tokenizer), load_rows(recipe, recipe.data.train_path)

    # Seconds per start-up phase, logged with the first step: the inputs up to the model (the
    # engines need it; the demo's is pre-trained on the data), Ray's start, the roles' phases,
    # then what was still left of the checks beside them.
    startup = {"inputs": time.perf_counter() - begun}
    (tokenizer, prepared_warnings, rows), ray_s, system = prepare_while_roles_start(
        recipe, load_and_check, lambda: start_system(recipe, model_path, None, "train"))
    roles = {phase: seconds for phase, seconds in system.startup.items() if phase != "ray"}
    startup.update(ray=ray_s, **roles)
    startup["inputs_wait"] = max(0.0, time.perf_counter() - begun - startup["inputs"] - ray_s - sum(roles.values()))
    print_warnings(warnings + prepared_warnings)
    sampler = PromptSampler(rows, seed=recipe.run.seed, shuffle=recipe.data.shuffle)
    run.start(model_path, tokenizer, "train", sampler, system=system)
    system.weights.during_push = lambda: chaos.at("push", system)
    prompts = PromptFeed(recipe, tokenizer, sampler, system.pool, sampling_spec(recipe, seed=None))
    eval_rows = load_rows(recipe, recipe.data.eval_path) if recipe.data.eval_path else []
    trainer = Trainer(recipe, run, system, prompts, system.teacher, chaos, tokenizer, eval_rows, startup={})
    if eval_rows and not run.resumed:
        trainer.before_rl = EvaluationBesideFirstStep(system.pool, system.scorers, tokenizer, recipe, eval_rows,
                                                      run.out)
    print(f"[aha] training {recipe.run.steps} steps; output in {run.out}", flush=True)
    startup["to_first_step"] = time.perf_counter() - begun  # bench/loop.py's time to first step
    trainer.startup = {**{f"startup/{k}": v for k, v in startup.items()},
                       **{f"startup_learner/{k}": v for k, v in system.learner_setup.items()}}
    for step in run.steps(recipe.run.steps, "aha train"):
        with run.surviving_learner_loss(rewind=prompts.rewind):  # a dead rank: back to the last checkpoint
            chaos.step = step
            grpo_step(step, trainer)
            run.end_step(step, recipe.run.steps, version=system.weights.version, sampler_state=prompts.sampler_state())
    return run.finish()
