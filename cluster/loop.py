"""The R1-Zero GRPO loop: sample -> score -> group -> learn -> sync weights -> log/checkpoint.

`train` is the whole loop, readable top to bottom. Groups stream: each finished group is
scored, turned into group-relative advantages and, once the learner ranks each have one,
trained on at once (forward/backward), while the rest of the step is still generating. The
optimizer steps when the step's groups are all in. With `algorithm.max_staleness = s >= 1`
the next `s` steps' prompts are already generating while the learner trains (async mode);
a group made by weights more than `s` versions old is dropped and counted.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cluster.config import Recipe, RecipeError, recipe_to_dict
from cluster.data import PromptSampler
from cluster.eval_metrics import reflection_rate, response_stats
from cluster.evaluation import evaluate
from cluster.learner_group import train_sequences
from cluster.rollout_pool import GroupStream, push_weights
from cluster.system import encode_prompts, load_rows, sampling_of, start_system
from cluster.types import Group
from learner.losses import group_advantages


@dataclass
class Batch:
    """One step's prompts, generating: the rows drawn, and where the sampler stood before."""

    stream: GroupStream
    rows: list = field(default_factory=list)
    sampler_before: dict = field(default_factory=dict)


def train(recipe: Recipe, *, resume: bool = False) -> Path:
    """Run `recipe` to `run.steps`; returns the output directory. Resumes from the last
    checkpoint with the same data order and weight version when `resume` is set."""
    from transformers import AutoTokenizer

    from cluster.prepare import prepare_data, prepare_model
    from tqdm import tqdm

    from cluster.plots import heldout_summary, plot_run
    from cluster.run_log import METRICS_FILE, RunLog, read_metrics, summary_line

    out = recipe.output_dir
    if not resume and (out / METRICS_FILE).is_file() and (out / METRICS_FILE).stat().st_size:
        raise RecipeError("run.output_dir", f"'{out}' already holds a run; pass --resume to continue it, "
                          "or choose another run.output_dir")
    prepare_data(recipe)  # first: the held-out prompts are kept out of the training data
    model_path = str(prepare_model(recipe))
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.tokenizer or model_path)
    rows = load_rows(recipe, recipe.data.train_path)
    algo, rollout, run = recipe.algorithm, recipe.rollout, recipe.run
    sampler = PromptSampler(rows, seed=run.seed, shuffle=recipe.data.shuffle)
    state = _load_driver_state(out) if resume else None
    log = RunLog(out)
    system = start_system(recipe, model_path, tokenizer)
    pool, scorers, learners = system.pool, system.scorers, system.learners
    version, first_step = 0, 1
    if state is not None:
        version = learners.load_checkpoint(str(out / "checkpoints"))
        if version != state["weight_version"]:
            raise RuntimeError(f"--resume: learner checkpoint is at version {version} but the driver state "
                               f"at {state['weight_version']}; the last save was interrupted")
        sampler.load_state_dict(state["sampler"])
        first_step = state["step"] + 1
        log.truncate_after(state["step"])
        push_weights(learners, pool, version, recipe.cluster.timeout_s)
    else:
        (out / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe), indent=2))
    eval_rows = load_rows(recipe, recipe.data.eval_path) if recipe.data.eval_path else []
    if eval_rows and state is None:
        before = evaluate(system, recipe, eval_rows)
        log.log_step(0, before)
        print(f"[aha] held-out accuracy before RL: {before['eval/accuracy']:.3f} "
              f"on {before['eval/num_prompts']:.0f} problems", flush=True)
    print(f"[aha] training {run.steps} steps; output in {out}", flush=True)

    def launch() -> Batch:
        before = sampler.state_dict()
        drawn = sampler.next_batch(rollout.prompts_per_step)
        stream = pool.stream(encode_prompts(recipe, tokenizer, drawn), sampling_of(recipe, seed=None))
        return Batch(stream=stream, rows=drawn, sampler_before=before)

    pending: deque[Batch] = deque()
    bar = tqdm(total=run.steps, initial=first_step - 1, desc="aha train", unit="step", dynamic_ncols=True)
    try:
        for step in range(first_step, run.steps + 1):
            started = time.perf_counter()
            while len(pending) < 1 + algo.max_staleness:  # on-policy: just this step's batch
                pending.append(launch())
            batch = pending.popleft()
            timings = {"generate": 0.0, "score": 0.0, "train": 0.0}
            accepted, round_, dropped_stale, dropped_flat, extra = [], [], 0, 0, 0
            waited = time.perf_counter()
            for index, samples in batch.stream:
                timings["generate"] += time.perf_counter() - waited
                row = batch.rows[index]
                t0 = time.perf_counter()
                scores = scorers.score([s.text for s in samples], row.fields,
                                       [len(s.completion_ids) for s in samples])
                timings["score"] += time.perf_counter() - t0
                group = _scored_group(row, samples, scores, algo.estimator)
                stale = version - min(s.weight_version for s in samples)
                flat = algo.dynamic_sampling and len(set(group.rewards)) == 1
                if stale > algo.max_staleness or flat:
                    dropped_stale += stale > algo.max_staleness
                    dropped_flat += flat
                    extra += 1
                    if extra > 4 * rollout.prompts_per_step:
                        raise RuntimeError(f"step {step}: dropped {extra} groups (all-equal rewards or "
                                           "stale); the step cannot be filled")
                    refill = sampler.next_batch(1)
                    batch.rows.extend(refill)
                    batch.stream.add(encode_prompts(recipe, tokenizer, refill), sampling_of(recipe, seed=None))
                    waited = time.perf_counter()
                    continue
                accepted.append((group, stale))
                round_.append(train_sequences(group))
                if len(round_) == recipe.learner.num_ranks:
                    t0 = time.perf_counter()
                    learners.accumulate(round_, end_of_step=len(accepted) == rollout.prompts_per_step)
                    timings["train"] += time.perf_counter() - t0
                    round_ = []
                if len(accepted) == rollout.prompts_per_step:
                    break
                waited = time.perf_counter()
            if len(accepted) < rollout.prompts_per_step:
                raise RuntimeError(f"step {step}: the rollout stream ended after {len(accepted)} groups")

            t0 = time.perf_counter()
            learner_metrics = learners.step()
            timings["train"] += time.perf_counter() - t0
            version = learner_metrics["weight_version"]
            t0 = time.perf_counter()
            push_weights(learners, pool, version, recipe.cluster.timeout_s)
            timings["sync"] = time.perf_counter() - t0
            timings["step"] = time.perf_counter() - started

            groups = [g for g, _ in accepted]
            metrics = _step_metrics(recipe, groups, [s for _, s in accepted], learner_metrics, timings)
            metrics.update(dropped_stale_groups=dropped_stale, dropped_flat_groups=dropped_flat)
            if eval_rows and (step == run.steps or (recipe.eval.every and step % recipe.eval.every == 0)):
                metrics.update(evaluate(system, recipe, eval_rows))
                print(f"[aha] held-out accuracy after step {step}: {metrics['eval/accuracy']:.3f}", flush=True)
            log.log_step(step, metrics)
            log.write_rollouts(step, _rollout_rows(step, groups))
            bar.set_postfix_str(summary_line(metrics))
            bar.update(1)
            bar.write(f"[aha] step {step}/{run.steps} reward {metrics['reward_mean']:.3f} "
                      f"acc {metrics['accuracy']:.3f} len {metrics['response_length_mean']:.1f} "
                      f"{metrics['time/step']:.1f}s")
            if step == run.steps or (run.checkpoint_every and step % run.checkpoint_every == 0):
                sampler_state = pending[0].sampler_before if pending else sampler.state_dict()
                learners.save_checkpoint(str(out / "checkpoints"))
                _save_driver_state(out, {"step": step, "sampler": sampler_state, "weight_version": version})
    finally:
        bar.close()
        plot_run(out)
        log.close()
        system.shutdown()
    summary = heldout_summary(read_metrics(out))
    if summary:
        print(f"[aha] {summary}", flush=True)
    print(f"[aha] done: metrics {out / METRICS_FILE}, plots {out / 'plots'}, "
          f"checkpoints {out / 'checkpoints'}", flush=True)
    return out


def _scored_group(row, samples, scores, estimator: str) -> Group:
    rewards = [s.total for s in scores]
    advantages = group_advantages(torch.tensor([rewards], dtype=torch.float64), estimator=estimator)[0]
    return Group(prompt_index=row.index, prompt_text=row.prompt, fields=row.fields, samples=samples,
                 rewards=rewards, advantages=advantages.tolist(), components=[s.components for s in scores])


def _step_metrics(recipe: Recipe, groups: list[Group], staleness: list[int], learner: dict, timings: dict) -> dict:
    samples = [s for g in groups for s in g.samples]
    rewards = torch.tensor([r for g in groups for r in g.rewards])
    lengths = torch.tensor([len(s.completion_ids) for s in samples], dtype=torch.float32)
    components = [c for g in groups for c in g.components]
    correctness = recipe.eval.correctness or next(iter(recipe.reward.weights))
    metrics = {
        "reward_mean": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
        "accuracy": sum(c[correctness] == 1.0 for c in components) / len(components),
        **response_stats(lengths.tolist(), recipe.rollout.max_new_tokens, [s.finish_reason for s in samples]),
        "reflection_rate": reflection_rate([s.text for s in samples], recipe.run.reflection_words),
        "staleness_mean": sum(staleness) / len(staleness), "staleness_max": max(staleness),
        **{f"reward/{name}": sum(c[name] for c in components) / len(components) for name in components[0]},
        **{f"learner/{k}": v for k, v in learner.items()},
        **{f"time/{k}": v for k, v in timings.items()},
    }
    # The learner's idle time: the part of the step it spent waiting for groups or the sync.
    metrics["time/idle"] = max(0.0, timings["step"] - timings["train"])
    metrics["learner_idle_share"] = metrics["time/idle"] / max(timings["step"], 1e-9)
    tokens = lengths.sum().item()
    metrics["rollout_tokens_per_s"] = tokens / max(timings["generate"] + timings["train"], 1e-9)
    metrics["learner_tokens_per_s"] = learner.get("tokens", 0) / max(timings["train"], 1e-9)
    return metrics


def _rollout_rows(step: int, groups: list[Group]) -> list[dict]:
    return [
        {"step": step, "prompt_index": g.prompt_index, "prompt": g.prompt_text, "completion": s.text,
         "reward": r, **{f"reward/{k}": v for k, v in c.items()}, "advantage": a,
         "weight_version": s.weight_version, "finish_reason": s.finish_reason, "num_tokens": len(s.completion_ids)}
        for g in groups for s, r, a, c in zip(g.samples, g.rewards, g.advantages, g.components)
    ]


def _save_driver_state(out: Path, state: dict) -> None:
    """Written after the learner's checkpoint, atomically: the pair is complete or the old one stands."""
    path = out / "checkpoints" / "driver-state.json"
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(state))
    os.replace(staging, path)


def _load_driver_state(out: Path) -> dict:
    path = out / "checkpoints" / "driver-state.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint under '{out / 'checkpoints'}'")
    return json.loads(path.read_text())
