"""The R1-Zero GRPO loop: sample -> score -> group -> learn -> sync weights -> log/checkpoint.

`train` is the whole loop, readable top to bottom. Groups stream: each finished group is sent
to the scorers at once and, scored and turned into group-relative advantages, waits for the
learner; whenever the learner is free it takes every group waiting in one forward/backward
call (cluster/roles/intake.py), while the rest of the step is still generating and scoring. The
optimizer steps when the step's groups are all in. With `algorithm.max_staleness = s >= 1`
the next `s` steps' prompts are already generating while the learner trains (async mode);
a group made by weights more than `s` versions old is dropped and counted.
"""

from __future__ import annotations

import json
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


from cluster.run.chaos import Chaos
from cluster.roles.teacher_pool import GroupTeacher, distill_metrics
from cluster.roles.evaluation import correctness_reward, evaluate_during_run
from cluster.inputs.data import PromptSampler
from cluster.roles.intake import ScoresInFlight, StepIntake, drop_reason
from cluster.inputs.prompts import encode_prompts, load_rows
from cluster.roles.learner_group import train_sequences
from cluster.output.eval_metrics import (group_stats, reflection_rate, response_stats, reward_failure_shares,
                                         reward_failure_warnings)
from cluster.output.base_model_files import save_model_files
from cluster.output.run_dir import FINAL_DIR, MODEL_FILES_DIR, PLACEMENT_FILE, RECIPE_FILE
from cluster.recipe import Recipe, RecipeError, recipe_to_dict
from cluster.run.resume_point import (check_same_data, find_resume_point, naming_last_checkpoint, save_checkpoint,
                            train_data_sha256)
from cluster.startup.live_placement import write_placement
from cluster.roles.rollout_pool import GroupStream, push_weights
from cluster.startup.specs import sampling_spec
from cluster.run.stop import RunStopped, StopRequest
from cluster.roles.system import start_system
from cluster.startup.ray import prepare_while_ray_starts
from cluster.wire.samples import Group


@dataclass
class Batch:
    """One step's prompts, generating: the rows drawn, and where the sampler stood before."""

    stream: GroupStream
    rows: list = field(default_factory=list)
    sampler_before: dict = field(default_factory=dict)


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, distilling: bool = False) -> Path:
    """Run `recipe` to `run.steps`; returns the output directory. With `resume`, continue the
    run there from its newest complete checkpoint (same data order and weight version); with
    `overwrite`, start afresh even where an earlier run left checkpoints. `distilling`: the
    recipe's distill.teacher grades every sampled token (`aha distill`, cluster/commands/distill.py)."""
    from cluster.output.run_dir import claim_output_dir
    from cluster.startup.preflight import check_before_start, require_prompt_file

    if recipe.distill.teacher and not distilling:
        raise RecipeError("distill.teacher", "is set, so this recipe distils: run it with aha distill (or set "
                          "distill.teacher = \"\" for GRPO)")
    chaos = Chaos.from_env()  # fault injection for tests and drills; off unless AHA_CHAOS is set
    require_prompt_file(recipe)
    warnings = check_before_start(recipe)  # before the directory is claimed: a mistake leaves nothing
    with claim_output_dir(recipe.output_dir, resume=resume, overwrite=overwrite) as run_dir:
        with naming_last_checkpoint(run_dir.checkpoints):
            return _train(recipe, run_dir, resume, warnings, chaos)


def _train(recipe: Recipe, run_dir, resume: bool, warnings: list[str], chaos: Chaos) -> Path:
    """The loop itself, in the claimed (locked) output directory `run_dir`."""
    from tqdm import tqdm

    from cluster.inputs.prepare import prepare_data, prepare_model
    from cluster.output.plots import plot_run, print_run_end
    from cluster.output.run_log import RunLog, summary_line
    from cluster.startup.preflight import check_prepared, load_tokenizer, print_warnings

    out, begun = run_dir.path, time.perf_counter()
    resume_at = find_resume_point(run_dir, recipe) if resume else None
    prepare_data(recipe)  # first: the held-out prompts are kept out of the training data
    data_sha256 = train_data_sha256(recipe)  # recorded with each checkpoint; resume needs the same file
    if resume_at is not None:
        check_same_data(resume_at, recipe.data.train_path, data_sha256)
    model_path = str(prepare_model(recipe))

    def load_and_check():  # the last checks before the actors: beside Ray's start
        tokenizer = load_tokenizer(recipe, model_path)
        return tokenizer, check_prepared(recipe, model_path, tokenizer), load_rows(recipe, recipe.data.train_path)

    inputs_s = time.perf_counter() - begun
    (tokenizer, prepared_warnings, rows), ray_s = prepare_while_ray_starts(recipe, load_and_check)
    print_warnings(warnings + prepared_warnings)
    algo, rollout, run = recipe.algorithm, recipe.rollout, recipe.run
    sampler = PromptSampler(rows, seed=run.seed, shuffle=recipe.data.shuffle)
    sampling = sampling_spec(recipe, seed=None)
    log = RunLog(out)
    # Seconds per phase, logged with the first step: the inputs up to the model, then the rest
    # of them beside Ray's start (`ray` is the part of that Ray took), then the actors.
    startup = {"inputs": inputs_s, "inputs_beside_ray": time.perf_counter() - begun - inputs_s}
    system = start_system(recipe, model_path, tokenizer)
    startup.update({phase: seconds for phase, seconds in system.startup.items() if phase != "ray"})
    startup["ray"] = ray_s
    bar = stop = None  # made just before the first step; the finally closes what was made
    try:
        pool, scorers, learners = system.pool, system.scorers, system.learners
        teacher = GroupTeacher(system.teacher, recipe) if system.teacher else None
        write_placement(out / PLACEMENT_FILE, system.plan, system.placement_groups())
        learners.check_shared_storage(out)  # the ranks write checkpoints there, maybe from other nodes
        pool.during_push = lambda: chaos.at("push", system)
        version, first_step = 0, 1
        if resume_at is not None:
            version = learners.load_checkpoint(str(run_dir.checkpoints), resume_at.checkpoint.tag)
            sampler.load_state_dict(resume_at.state["sampler"])
            first_step = resume_at.step + 1
            log.truncate_after(resume_at.step)
            push_weights(learners, pool, version, recipe.cluster.timeout_s)
        else:
            (out / RECIPE_FILE).write_text(json.dumps(recipe_to_dict(recipe), indent=2))
            save_model_files(out / MODEL_FILES_DIR, model_path, tokenizer,
                             trust_remote_code=recipe.model.trust_remote_code)
        eval_rows = load_rows(recipe, recipe.data.eval_path) if recipe.data.eval_path else []
        if eval_rows and resume_at is None:
            evaluating = time.perf_counter()
            before = evaluate_during_run(pool, scorers, tokenizer, recipe, eval_rows, out, 0)
            startup["first_evaluation"] = time.perf_counter() - evaluating
            log.log_step(0, before)
            print(f"[aha] held-out accuracy before RL: {before['eval/accuracy']:.3f} "
                  f"on {before['eval/num_prompts']:.0f} problems", flush=True)
        print(f"[aha] training {run.steps} steps; output in {out}", flush=True)

        def launch() -> Batch:
            before = sampler.state_dict()
            drawn = sampler.next_batch(rollout.prompts_per_step)
            return Batch(stream=pool.stream(encode_prompts(recipe, tokenizer, drawn), sampling),
                         rows=drawn, sampler_before=before)

        def replace_dropped(batch: Batch) -> None:
            drawn = sampler.next_batch(1)
            batch.rows.extend(drawn)
            batch.stream.add(encode_prompts(recipe, tokenizer, drawn), sampling)

        pending: deque[Batch] = deque()
        bar = tqdm(total=run.steps, initial=first_step - 1, desc="aha train", unit="step", dynamic_ncols=True)
        stop = StopRequest().install()  # the first SIGTERM / Ctrl-C: finish this step, checkpoint, exit 0
        for step in range(first_step, run.steps + 1):
            started, chaos.step = time.perf_counter(), step
            while len(pending) < 1 + algo.max_staleness:  # on-policy: just this step's batch
                pending.append(launch())
            batch = pending.popleft()
            timings = {"generate": 0.0, "score": 0.0, "train": 0.0}
            intake = StepIntake(wanted=rollout.prompts_per_step, max_dropped=4 * rollout.prompts_per_step)
            scoring = ScoresInFlight(scorers, algo.estimator, teacher)
            learning = None  # the learner's call in flight: one at a time, handed every group waiting
            chaos.at("generate", system)  # fault injection, while this step's groups are being sampled
            while not intake.full:
                with timed(timings, "generate"):  # waiting for a group, a score or the learner
                    arrived = batch.stream.next_group(also=[*scoring.refs(), *(learning or [])])
                if arrived is not None:
                    index, samples = arrived
                    scoring.submit(batch.rows[index], samples)
                for group in scoring.take_ready(timings):
                    staleness = version - min(s.weight_version for s in group.samples)
                    reason = drop_reason(group.rewards, staleness, max_staleness=algo.max_staleness,
                                         dynamic_sampling=algo.dynamic_sampling)
                    if reason is not None:
                        intake.drop(reason, step)
                        replace_dropped(batch)
                    else:
                        intake.accept(group, staleness)
                idle = batch.stream.ended and not scoring.pending  # nothing to do but wait for the learner
                if learning is not None and (idle or learners.answered(learning)):
                    with timed(timings, "train"):
                        learners.finish(learning)
                    learning = None
                if learning is None and (taken := intake.take_untrained(recipe.learner.num_ranks)):
                    learning = learners.submit([train_sequences(g) for g in taken], end_of_step=intake.full)
                elif learning is None and idle and not intake.full:
                    raise RuntimeError(f"step {step}: the rollout stream ended after {len(intake.accepted)} groups")
            with timed(timings, "train"):  # the step's last groups, if the learner was busy when they came
                if learning is not None:
                    learners.finish(learning)
                if intake.untrained:
                    learners.accumulate([train_sequences(g) for g in intake.take_untrained()], end_of_step=True)

            if rollout.sleep_between_steps:
                pool.sleep()  # free the engines' GPU memory for the optimizer step (no-op on CPU)
            chaos.at("train", system)  # fault injection, before the optimizer step
            with timed(timings, "train"):
                learner_metrics = learners.step()
            version = learner_metrics["weight_version"]
            with timed(timings, "sync"):
                if rollout.sleep_between_steps:
                    pool.wake_up()
                push_weights(learners, pool, version, recipe.cluster.timeout_s)
            timings["step"] = time.perf_counter() - started

            metrics = {**_step_metrics(recipe, intake, learner_metrics, timings), **system.recovery.step_metrics()}
            if step == first_step:  # what it took to get here: bench/loop.py's time to first step
                startup["to_first_step"] = started - begun
                metrics.update({f"startup/{phase}": seconds for phase, seconds in startup.items()})
                metrics.update({f"startup_learner/{part}": seconds for part, seconds in system.learner_setup.items()})
            for warning in reward_failure_warnings(step, [f for g in intake.accepted for f in g.failures]):
                bar.write(warning)
            if eval_rows and (step == run.steps or (recipe.eval.every and step % recipe.eval.every == 0)):
                metrics.update(evaluate_during_run(pool, scorers, tokenizer, recipe, eval_rows, out, step))
                print(f"[aha] held-out accuracy after step {step}: {metrics['eval/accuracy']:.3f}", flush=True)
            log.log_step(step, metrics)
            log.write_rollouts(step, _rollout_rows(step, intake.accepted))
            bar.set_postfix_str(summary_line(metrics))
            bar.update(1)
            if step % run.log_every == 0 or step == run.steps:
                bar.write(f"[aha] step {step}/{run.steps} reward {metrics['reward_mean']:.3f} "
                          f"acc {metrics['accuracy']:.3f} len {metrics['response_length_mean']:.1f} "
                          f"{metrics['time/step']:.1f}s")
            stopping = stop.requested and step < run.steps
            if step == run.steps or stopping or (run.checkpoint_every and step % run.checkpoint_every == 0):
                sampler_state = pending[0].sampler_before if pending else sampler.state_dict()
                save_checkpoint(learners, run_dir.checkpoints, {"step": step, "sampler": sampler_state,
                                "weight_version": version, "train_data_sha256": data_sha256}, run.keep_checkpoints)
            if stopping:
                raise RunStopped(f"stopped after step {step} of {run.steps} ({stop.signal}), checkpoint written")
        # The run's model as a Hugging Face directory: the next stage's model.path.
        learners.export_hf(str(out / FINAL_DIR), str(out / MODEL_FILES_DIR))
    finally:
        if stop is not None:
            stop.restore()
            bar.close()
        plot_run(out)
        log.close()
        system.shutdown()
    print_run_end(out, stage="distillation" if system.teacher else "RL")
    return out


@contextmanager
def timed(timings: dict[str, float], key: str):
    """Add the seconds the block takes to `timings[key]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def _step_metrics(recipe: Recipe, intake: StepIntake, learner: dict, timings: dict) -> dict:
    groups, staleness = intake.accepted, intake.staleness
    samples = [s for g in groups for s in g.samples]
    lengths = [len(s.completion_ids) for s in samples]
    components = [c for g in groups for c in g.components]
    correctness = correctness_reward(recipe)
    metrics = {
        **group_stats([g.rewards for g in groups]),
        "accuracy": sum(c[correctness] == 1.0 for c in components) / len(components),
        **response_stats(lengths, recipe.rollout.max_new_tokens, [s.finish_reason for s in samples]),
        "reflection_rate": reflection_rate([s.text for s in samples], recipe.run.reflection_words),
        "staleness_mean": sum(staleness) / len(staleness), "staleness_max": max(staleness),
        "dropped_stale_groups": intake.dropped["stale"], "dropped_flat_groups": intake.dropped["flat"],
        **{f"reward/{name}": sum(c[name] for c in components) / len(components) for name in components[0]},
        **reward_failure_shares(list(components[0]), [f for g in groups for f in g.failures]),
        **{f"learner/{k}": v for k, v in learner.items()},
        **{f"time/{k}": v for k, v in timings.items()},
    }
    # The learner's idle time: the part of the step it spent waiting for groups or the sync.
    # The driver only waits on the learner at the step's end, so the busy time is the rank's own.
    busy = learner.get("accumulate_s", 0.0) + learner.get("update_s", 0.0)
    metrics["time/learner_busy"] = busy
    metrics["time/idle"] = max(0.0, timings["step"] - busy)
    metrics["learner_idle_share"] = metrics["time/idle"] / max(timings["step"], 1e-9)
    metrics["tokens/sampled"] = sum(lengths)  # with learner/tokens (and distill/teacher_tokens): compute spent
    if groups[0].teacher:
        metrics.update(distill_metrics(groups))
    metrics["rollout_tokens_per_s"] = sum(lengths) / max(timings["generate"] + timings["train"], 1e-9)
    metrics["learner_tokens_per_s"] = learner.get("tokens", 0) / max(busy, 1e-9)
    return metrics


def _rollout_rows(step: int, groups: list[Group]) -> list[dict]:
    return [
        {"step": step, "prompt_index": g.prompt_index, "prompt": g.prompt_text, "completion": s.text,
         "reward": r, **{f"reward/{k}": v for k, v in c.items()}, **{f"reward_failure/{k}": f.get(k, "") for k in c},
         "advantage": a, "weight_version": s.weight_version, "finish_reason": s.finish_reason,
         "num_tokens": len(s.completion_ids)}
        for g in groups for s, r, a, c, f in zip(g.samples, g.rewards, g.advantages, g.components, g.failures,
                                                 strict=True)
    ]
