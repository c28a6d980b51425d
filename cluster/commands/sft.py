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

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from cluster.recipe import Recipe, RecipeError
from cluster.run.resume_point import naming_last_checkpoint


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
    from cluster.output.run_dir import check_claimable, claim_output_dir
    from cluster.startup.preflight import check_before_start, load_tokenizer
    from cluster.startup.ray import prepare_while_ray_starts

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
    with claim_output_dir(recipe.output_dir, resume=resume, overwrite=overwrite) as run_dir:
        with naming_last_checkpoint(run_dir.checkpoints):
            return _sft(recipe, run_dir, resume, warnings, model_path, tokenizer, traces)


def _sft(recipe: Recipe, run_dir, resume: bool, warnings: list[str], model_path: str, tokenizer,
         traces: TraceSets) -> Path:
    """The SFT loop itself, in the claimed (locked) output directory."""
    from tqdm import tqdm

    from cluster.roles.evaluation import evaluate_during_run
    from cluster.output.base_model_files import save_model_files
    from cluster.inputs.data import PromptSampler
    from cluster.inputs.prepare import file_sha256
    from cluster.inputs.prompts import load_rows
    from cluster.output.plots import plot_run, print_run_end
    from cluster.output.run_dir import FINAL_DIR, MODEL_FILES_DIR, PLACEMENT_FILE, RECIPE_FILE
    from cluster.output.run_log import RunLog
    from cluster.startup.preflight import check_prepared, print_warnings
    from cluster.recipe import recipe_to_dict
    from cluster.run.resume_point import check_same_data, find_resume_point, save_checkpoint
    from cluster.roles.rollout_pool import push_weights
    from cluster.startup.live_placement import write_placement
    from cluster.run.stop import RunStopped, StopRequest
    from cluster.roles.system import start_system

    out, sft_cfg, run = run_dir.path, recipe.sft, recipe.run
    resume_at = find_resume_point(run_dir, recipe) if resume else None
    data_sha256 = file_sha256(sft_cfg.train_path)
    if resume_at is not None:
        check_same_data(resume_at, sft_cfg.train_path, data_sha256)
    eval_rows = load_rows(recipe, recipe.data.eval_path)[: recipe.eval.num_prompts] if recipe.data.eval_path else []
    if eval_rows:
        warnings = warnings + check_prepared(recipe, model_path, tokenizer)
    print_warnings(warnings)
    steps = total_steps(len(traces.train), sft_cfg.epochs, sft_cfg.batch_size)
    if traces.skipped:
        print(f"[aha] skipped {traces.skipped} training rows over sft.max_length={sft_cfg.max_length} tokens "
              "(sft.too_long = \"skip\")", flush=True)
    sampler = PromptSampler(list(range(len(traces.train))), seed=run.seed, shuffle=sft_cfg.shuffle)
    log = RunLog(out)
    system = start_system(recipe, model_path, tokenizer, "sft", total_steps=steps)
    bar = stop = None  # made just before the first step; the finally closes what was made
    try:
        learners = system.learners
        write_placement(out / PLACEMENT_FILE, system.plan, system.placement_groups())
        learners.check_shared_storage(out)  # the ranks write checkpoints there, maybe from other nodes
        first_step = 1
        if resume_at is not None:
            learners.load_checkpoint(str(run_dir.checkpoints), resume_at.checkpoint.tag)
            sampler.load_state_dict(resume_at.state["sampler"])
            first_step = resume_at.step + 1
            log.truncate_after(resume_at.step)
        else:
            (out / RECIPE_FILE).write_text(json.dumps(recipe_to_dict(recipe), indent=2))
            save_model_files(out / MODEL_FILES_DIR, model_path, tokenizer,
                             trust_remote_code=recipe.model.trust_remote_code)

        def held_out(step: int) -> dict:
            """Held-out loss on the traces; held-out accuracy through the engines, given the weights."""
            metrics = {"eval/loss": learners.held_out_nll(traces.held_out)} if traces.held_out else {}
            if eval_rows:
                if step > 0 or resume_at is not None:
                    push_weights(learners, system.pool, step, recipe.cluster.timeout_s)
                metrics.update(evaluate_during_run(system.pool, system.scorers, tokenizer, recipe, eval_rows, out,
                                                   step))
            return metrics

        if resume_at is None and (traces.held_out or eval_rows):
            before = held_out(0)
            log.log_step(0, before)
            print(f"[aha] before SFT: {_held_out_line(before)}", flush=True)
        print(f"[aha] SFT on {len(traces.train)} traces: {sft_cfg.epochs} epoch(s), {steps} steps of "
              f"{sft_cfg.batch_size}; output in {out}", flush=True)
        bar = tqdm(total=steps, initial=first_step - 1, desc="aha sft", unit="step", dynamic_ncols=True)
        stop = StopRequest().install()  # the first SIGTERM / Ctrl-C: finish this step, checkpoint, exit 0
        for step in range(first_step, steps + 1):
            started = time.perf_counter()
            order = sampler.next_batch(step_size(step, len(traces.train), sft_cfg.epochs, sft_cfg.batch_size))
            drawn = [traces.train[i] for i in order]
            shards = [drawn[r::recipe.learner.num_ranks] for r in range(recipe.learner.num_ranks)]
            learners.accumulate_shards(shards, end_of_step=True)
            learner_metrics = learners.step()
            elapsed = time.perf_counter() - started
            metrics = {**{f"learner/{k}": v for k, v in learner_metrics.items()},
                       "epoch": (step * sft_cfg.batch_size) / len(traces.train), "sequences": len(drawn),
                       "trace_rows": [traces.train_rows[i] for i in order],  # which traces, in the file's rows
                       "time/step": elapsed, "learner_tokens_per_s": learner_metrics["tokens"] / max(elapsed, 1e-9)}
            if step == steps or (sft_cfg.eval_every and step % sft_cfg.eval_every == 0):
                metrics.update(held_out(step))
                bar.write(f"[aha] after step {step}: {_held_out_line(metrics)}")
            log.log_step(step, metrics)
            bar.set_postfix_str(f"loss={learner_metrics['loss']:.3f} tok/s={metrics['learner_tokens_per_s']:.0f}")
            bar.update(1)
            if step % run.log_every == 0 or step == steps:
                bar.write(f"[aha] step {step}/{steps} loss {learner_metrics['loss']:.4f} "
                          f"token acc {learner_metrics['token_accuracy']:.3f} lr {learner_metrics['lr']:.2e} "
                          f"{elapsed:.1f}s")
            stopping = stop.requested and step < steps
            if step == steps or stopping or (run.checkpoint_every and step % run.checkpoint_every == 0):
                save_checkpoint(learners, run_dir.checkpoints, {"step": step, "sampler": sampler.state_dict(),
                                "weight_version": learner_metrics["weight_version"],
                                "train_data_sha256": data_sha256}, run.keep_checkpoints)
            if stopping:
                raise RunStopped(f"stopped after step {step} of {steps} ({stop.signal}), checkpoint written")
        learners.export_hf(str(out / FINAL_DIR), str(out / MODEL_FILES_DIR))
    finally:
        if stop is not None:
            stop.restore()
            bar.close()
        plot_run(out)
        log.close()
        system.shutdown()
    print_run_end(out, stage="SFT")
    return out


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
