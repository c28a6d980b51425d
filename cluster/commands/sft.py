"""`aha sft`: supervised fine-tuning on the learner group — the cold start and the second SFT
of the reasoning recipe, and the student's side of off-policy distillation.

The same DeepSpeed ranks, ZeRO stages and packed micro-batches as RL, with the SFT objective
(token NLL of the completion / assistant tokens, learner/sft_loss.py). The traces
(`sft.train_path`, docs/commands.md) are encoded as RL prompts them (cluster/inputs/traces.py),
visited in a seeded order epoch after epoch, `sft.batch_size` sequences per optimizer step.
Every `sft.eval_every` steps (and before and after): the held-out loss on `sft.eval_path`, and,
where `data.eval_path` is set, held-out task accuracy through rollout workers and scorers, to
which the learner pushes its weights as in RL. Checkpoints, `--resume` (same data order),
metrics.jsonl, TensorBoard, plots and `final/` are the GRPO loop's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.recipe import Recipe, RecipeError
from cluster.run.chaos import Chaos

if TYPE_CHECKING:  # imported in sft(), before Ray starts
    from cluster.run.scaffold import TrainingRun


@dataclass
class TraceSets:
    """The encoded traces to train on and to measure the held-out loss with."""

    train: list  # TrainSequence
    train_rows: list[int]  # the file row of each training sequence
    held_out: list
    skipped: int  # training rows over sft.max_length, left out


def sft(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Fine-tune the recipe's model on `sft.train_path`; returns the output directory."""
    from cluster.inputs.data import DataError
    from cluster.inputs.prepare import prepare_data, prepare_model
    from cluster.inputs.traces import load_traces
    from cluster.output.run_dir import check_claimable
    from cluster.startup.preflight import check_before_start, load_tokenizer
    from cluster.run.scaffold import TrainingRun, claimed_run
    from cluster.startup.ray import prepare_while_ray_starts

    _import_the_run()
    chaos = Chaos.from_env()  # fault injection for tests and drills; off unless AHA_CHAOS is set
    if not recipe.sft.train_path:
        raise RecipeError("sft.train_path", "is required (a trace data set: Parquet or JSONL with prompt + "
                          "completion or messages columns)")
    warnings = check_before_start(recipe)
    prepare_data(recipe)  # [data.synthetic] may write the traces (cold_start_path)
    for path in (recipe.sft.train_path, recipe.sft.eval_path):
        if path:  # read and checked now: a bad trace file fails before the directory is claimed
            load_traces(path, recipe.sft, recipe.data.template)
    if recipe.sft.eval_path and Path(recipe.sft.eval_path).resolve() == Path(recipe.sft.train_path).resolve():
        raise DataError(f"data file '{recipe.sft.eval_path}': sft.eval_path is the training file itself; a held-out "
                        "loss needs held-out traces")
    check_claimable(recipe.output_dir, resume=resume, overwrite=overwrite)  # one line, before Ray starts
    # The inputs are made and every trace encoded (beside Ray's start) before the directory is
    # claimed: a trace over sft.max_length (with too_long = "error") or a tokenizer without EOS
    # leaves nothing behind.
    model_path = str(prepare_model(recipe))

    def encode():
        tokenizer = load_tokenizer(recipe, model_path)
        return tokenizer, encode_trace_sets(recipe, tokenizer)

    (tokenizer, traces), _ = prepare_while_ray_starts(recipe, encode)
    with claimed_run(recipe, resume=resume, overwrite=overwrite) as run_dir:
        with TrainingRun(recipe, run_dir, stage="SFT", resume=resume) as run:
            return _sft(recipe, run, warnings, model_path, tokenizer, traces, chaos)


def _import_the_run() -> None:
    """Import what the run needs before Ray starts: under `aha submit`, a module the driver first
    imported after joining the cluster was missing from the job's working directory (the
    two-node test saw it), so nothing is left to import lazily once Ray is up."""
    import cluster.inputs.data  # noqa: F401
    import cluster.inputs.prompts  # noqa: F401
    import cluster.roles.evaluation  # noqa: F401


def _sft(recipe: Recipe, run: TrainingRun, warnings: list[str], model_path: str, tokenizer,
         traces: TraceSets, chaos: Chaos) -> Path:
    """The SFT steps, in the run's claimed (locked) output directory."""
    from cluster.inputs.data import PromptSampler
    from cluster.inputs.prepare import file_sha256
    from cluster.inputs.prompts import load_rows
    from cluster.startup.preflight import check_prepared, print_warnings

    sft_cfg = recipe.sft
    run.check_data(sft_cfg.train_path, file_sha256(sft_cfg.train_path))
    eval_rows = load_rows(recipe, recipe.data.eval_path)[: recipe.eval.num_prompts] if recipe.data.eval_path else []
    if eval_rows:
        warnings = warnings + check_prepared(recipe, model_path, tokenizer)
    print_warnings(warnings)
    steps = total_steps(len(traces.train), sft_cfg.epochs, sft_cfg.batch_size)
    if traces.skipped:
        print(f"[aha] skipped {traces.skipped} training rows over sft.max_length={sft_cfg.max_length} tokens "
              "(sft.too_long = \"skip\")", flush=True)
    sampler = PromptSampler(list(range(len(traces.train))), seed=recipe.run.seed, shuffle=sft_cfg.shuffle)
    run.start(model_path, tokenizer, "sft", sampler, total_steps=steps)
    held_out = HeldOut(recipe, run, tokenizer, traces.held_out, eval_rows)
    if not run.resumed and (traces.held_out or eval_rows):
        before = held_out.measure(0)
        run.log.log_step(0, before)
        print(f"[aha] before SFT: {_held_out_line(before)}", flush=True)
    print(f"[aha] SFT on {len(traces.train)} traces: {sft_cfg.epochs} epoch(s), {steps} steps of "
          f"{sft_cfg.batch_size}; output in {run.out}", flush=True)
    for step in run.steps(steps, "aha sft"):
        with run.surviving_learner_loss(rewind=sampler.load_state_dict):  # a dead rank: back to the last checkpoint
            chaos.step = step
            learned = sft_step(step, steps, recipe, run, traces, sampler, chaos)
            if step == steps or (sft_cfg.eval_every and step % sft_cfg.eval_every == 0):
                learned.update(held_out.measure(step))
                run.say(f"[aha] after step {step}: {_held_out_line(learned)}")
            run.record(step, learned, f"loss={learned['learner/loss']:.3f} tok/s={learned['learner_tokens_per_s']:.0f}")
            if step % recipe.run.log_every == 0 or step == steps:
                run.say(f"[aha] step {step}/{steps} loss {learned['learner/loss']:.4f} "
                        f"token acc {learned['learner/token_accuracy']:.3f} lr {learned['learner/lr']:.2e} "
                        f"{learned['time/step']:.1f}s")
            run.end_step(step, steps, version=learned["learner/weight_version"], sampler_state=sampler.state_dict())
    return run.finish()


def sft_step(step: int, steps: int, recipe: Recipe, run: TrainingRun, traces: TraceSets, sampler,
             chaos: Chaos) -> dict:
    """One SFT step: the next batch of traces, forward/backward spread over the ranks, the
    optimizer step; returns its metrics."""
    sft_cfg, learners, started = recipe.sft, run.system.learners, time.perf_counter()
    order = sampler.next_batch(step_size(step, len(traces.train), sft_cfg.epochs, sft_cfg.batch_size))
    drawn = [traces.train[i] for i in order]
    shards = [drawn[r::recipe.learner.num_ranks] for r in range(recipe.learner.num_ranks)]
    learners.accumulate_shards(shards, end_of_step=True)
    chaos.at("train", run.system)  # fault injection, before the optimizer step
    learned = learners.step()
    elapsed = time.perf_counter() - started
    return {**{f"learner/{k}": v for k, v in learned.items()},
            "epoch": (step * sft_cfg.batch_size) / len(traces.train), "sequences": len(drawn),
            "trace_rows": [traces.train_rows[i] for i in order],  # which traces, in the file's rows
            "time/step": elapsed, "learner_tokens_per_s": learned["tokens"] / max(elapsed, 1e-9),
            **run.system.recovery.step_metrics()}


class HeldOut:
    """SFT's held-out measures: the loss on the held-out traces and, where data.eval_path is
    set, task accuracy through the engines, which first get the learner's weights."""

    def __init__(self, recipe: Recipe, run: TrainingRun, tokenizer, sequences: list, eval_rows: list):
        self.recipe, self.run, self.tokenizer, self.sequences, self.eval_rows = recipe, run, tokenizer, sequences, eval_rows

    def measure(self, step: int) -> dict:
        from cluster.roles.evaluation import evaluate_during_run

        system = self.run.system
        metrics = {"eval/loss": system.learners.held_out_nll(self.sequences)} if self.sequences else {}
        if self.eval_rows:
            if step > 0:  # a resumed run's engines got the checkpoint's weights when it started
                system.weights.push(step)
            metrics.update(evaluate_during_run(system.pool, system.scorers, self.tokenizer, self.recipe,
                                               self.eval_rows, self.run.out, step))
        return metrics


def total_steps(num_traces: int, epochs: int, batch_size: int) -> int:
    """Optimizer steps for `epochs` passes over `num_traces` in batches of `batch_size` (the
    last step takes what is left)."""
    return math.ceil(epochs * num_traces / batch_size)


def step_size(step: int, num_traces: int, epochs: int, batch_size: int) -> int:
    """How many traces step `step` (from 1) trains on: a full batch, or what the epochs leave."""
    return min(batch_size, epochs * num_traces - (step - 1) * batch_size)


def encode_trace_sets(recipe: Recipe, tokenizer) -> TraceSets:
    """The training and held-out traces as the learner's sequences (EOS appended, prompts
    templated); training rows over sft.max_length are skipped or an error (sft.too_long)."""
    from cluster.inputs.traces import encode_traces, fit_to_length, load_traces
    from learner.batching import TrainSequence

    sets, rows_of, skipped = {}, {}, 0
    for name, path in (("train", recipe.sft.train_path), ("held_out", recipe.sft.eval_path)):
        if not path:
            sets[name] = []
            continue
        rows = load_traces(path, recipe.sft, recipe.data.template)
        if name == "held_out":
            rows = rows[: recipe.sft.eval_rows]
        encoded = encode_traces(rows, tokenizer, template=recipe.data.template,
                                system_prompt=recipe.data.system_prompt, path=path,
                                file_format=recipe.sft.file_format)
        kept, left_out = fit_to_length(encoded, recipe.sft.max_length, too_long=recipe.sft.too_long, path=path,
                                       file_format=recipe.sft.file_format)
        skipped += len(left_out) if name == "train" else 0
        sets[name] = [TrainSequence(prompt_ids=t.prompt_ids, completion_ids=t.completion_ids,
                                    completion_mask=t.completion_mask) for t in kept]
        rows_of[name] = [t.index for t in kept]
    return TraceSets(train=sets["train"], train_rows=rows_of.get("train", []), held_out=sets["held_out"],
                     skipped=skipped)


def _held_out_line(metrics: dict) -> str:
    parts = []
    if "eval/loss" in metrics:
        parts.append(f"held-out loss {metrics['eval/loss']:.4f}")
    if "eval/accuracy" in metrics:
        parts.append(f"held-out accuracy {metrics['eval/accuracy']:.3f}")
    return ", ".join(parts)
