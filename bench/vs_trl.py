"""The demo's RL step against TRL's GRPOTrainer, side by side on this machine.

Both train `make demo`'s RL run (deploy/recipes/arith-zero-cpu.toml): the same pre-trained base
model and prompts (runs/demo, made first if missing), 16 prompts x 8 completions per step, at most
48 new tokens at temperature 1, reward 1 for the right answer plus 0.1 for the format, learning
rate 5e-5 (constant), clipping 0.2 / 0.28, no KL, token-mean loss, the same number of steps. aha
runs on-policy (algorithm.max_staleness = 0) and, with `--async`, one step off (= 1, the demo's
own setting: generation of step n+1 beside training on step n). aha
runs as `aha train` (its own evaluation at the end: greedy, 256 held-out problems); TRL runs in a
process of its own (HF generate, as TRL does without vLLM), and its model is graded on the same
256 problems, greedy, by the same reward. Prints each one's median step time, their ratio, and
the held-out accuracy after training, per seed.

TRL is not one of aha's dependencies: install it beside aha's packages first, e.g.
`pip install --target /tmp/trl trl accelerate datasets pandas multiprocess xxhash` and run with
`PYTHONPATH=/tmp/trl`.

    .venv/bin/python bench/vs_trl.py [--steps 40] [--seeds 0,1] [--async] [--skip-trl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "deploy/recipes/arith-zero-cpu.toml"
AHA = REPO / ".venv/bin/aha"


def aha_run(out: Path, steps: int, seed: int, staleness: int) -> dict:
    """`aha train` on the demo recipe; its median step (the first, with the evaluation beside
    it, left out) and held-out accuracy after the last step."""
    done = subprocess.run([str(AHA), "train", str(DEMO_RECIPE), "--run.output_dir", str(out), "--run.steps",
                           str(steps), "--run.seed", str(seed), "--eval.every", "0", "--algorithm.max_staleness",
                           str(staleness)], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"aha train failed: {done.stderr[-2000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps_ = [m for m in metrics if m["step"] >= 2]
    return {"step_s": statistics.median(m["time/step"] for m in steps_),
            "accuracy_before": metrics[0]["eval/accuracy"], "accuracy": metrics[-1]["eval/accuracy"]}


def trl_run(steps: int, seed: int, out: str) -> dict:
    """TRL's GRPOTrainer on the same model, prompts and settings (run in its own process)."""
    import pyarrow.parquet as pq
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from cluster.recipe import load_recipe
    from rewards import REGISTRY

    recipe = load_recipe(DEMO_RECIPE)
    template = recipe.data.template
    rows = pq.read_table(REPO / recipe.data.train_path).to_pylist()
    data = Dataset.from_list([{"prompt": template.format(prompt=r["prompt"]), "answer": r["answer"]} for r in rows])

    def correct(completions, answer, **_):
        return [REGISTRY["arithmetic"](c, answer=a) for c, a in zip(completions, answer)]

    def formatted(completions, answer, **_):
        return [REGISTRY["format"](c, answer=a) for c, a in zip(completions, answer)]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], 0.0

        def on_step_begin(self, *args, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    model_path = str(REPO / recipe.model.path)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=out, per_device_train_batch_size=recipe.rollout.prompts_per_step * recipe.rollout.group_size,
        num_generations=recipe.rollout.group_size, max_completion_length=recipe.rollout.max_new_tokens,
        temperature=recipe.rollout.temperature, learning_rate=recipe.learner.lr, lr_scheduler_type="constant",
        beta=0.0, epsilon=recipe.algorithm.clip_low, epsilon_high=recipe.algorithm.clip_high, loss_type="dapo",
        reward_weights=[1.0, 0.1], max_steps=steps, logging_steps=1, report_to=[], save_strategy="no",
        seed=seed, use_cpu=True, bf16=False, max_grad_norm=recipe.learner.grad_clip, disable_tqdm=True)
    times = StepTimes()
    trainer = GRPOTrainer(model=model, reward_funcs=[correct, formatted], args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[times])
    trainer.train()
    return {"step_s": statistics.median(times.times[1:]), "accuracy": held_out_accuracy(trainer.model, tokenizer, recipe)}


def held_out_accuracy(model, tokenizer, recipe) -> float:
    """Greedy accuracy on the demo's held-out problems, graded by the demo's correctness reward."""
    import pyarrow.parquet as pq
    import torch

    from rewards import REGISTRY

    rows = pq.read_table(REPO / recipe.data.eval_path).to_pylist()[: recipe.eval.num_prompts]
    prompts = [recipe.data.template.format(prompt=r["prompt"]) for r in rows]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    model.eval()
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=recipe.rollout.max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    texts = [t.split("</answer>")[0] + "</answer>" if "</answer>" in t else t for t in texts]  # aha's stop string
    return sum(REGISTRY["arithmetic"](t, answer=r["answer"]) == 1.0 for t, r in zip(texts, rows)) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--async", dest="run_async", action="store_true")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--trl-worker", help=argparse.SUPPRESS)  # internal: one TRL run, JSON to this path
    args = parser.parse_args()
    os.chdir(REPO)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.trl_worker:
        seed = seeds[0]
        with tempfile.TemporaryDirectory() as tmp:
            Path(args.trl_worker).write_text(json.dumps(trl_run(args.steps, seed, tmp)))
        return
    if not (REPO / "runs/demo/base-model/config.json").is_file():  # the demo's base model and data
        subprocess.run([str(AHA), "train", str(DEMO_RECIPE), "--run.steps", "1", "--run.output_dir",
                        "runs/demo/bench-warm-up", "--overwrite"], check=True, cwd=REPO)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            row = {"seed": seed, "aha": aha_run(Path(tmp) / f"aha-{seed}", args.steps, seed, 0)}
            if args.run_async:
                row["aha async"] = aha_run(Path(tmp) / f"async-{seed}", args.steps, seed, 1)
            if not args.skip_trl:
                result = Path(tmp) / f"trl-{seed}.json"
                subprocess.run([sys.executable, __file__, "--trl-worker", str(result), "--steps", str(args.steps),
                                "--seeds", str(seed)], check=True, timeout=3600, stdout=subprocess.DEVNULL)
                row["TRL"] = json.loads(result.read_text())
            rows.append(row)
            print(f"seed {seed}: " + "; ".join(f"{name} step {r['step_s']:.3f} s, held-out {r['accuracy']:.1%}"
                                               for name, r in row.items() if name != "seed"), flush=True)
    print(f"the demo, {args.steps} steps, median step over steps 2..{args.steps}, held-out greedy accuracy after:")
    for name in [n for n in rows[0] if n != "seed"]:
        steps = [r[name]["step_s"] for r in rows]
        accuracy = [r[name]["accuracy"] for r in rows]
        print(f"  {name:10s} step {min(steps):.3f}-{max(steps):.3f} s, held-out {min(accuracy):.1%}-{max(accuracy):.1%}")
    if "TRL" in rows[0]:
        ratios = [r["TRL"]["step_s"] / r["aha"]["step_s"] for r in rows]
        print(f"  aha steps/s over TRL's: {min(ratios):.2f}-{max(ratios):.2f} (target >= 1.0)")
        if args.run_async:
            ratios = [r["TRL"]["step_s"] / r["aha async"]["step_s"] for r in rows]
            print(f"  aha async steps/s over TRL's: {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    main()
