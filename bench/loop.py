"""The whole loop: steps/s and time split, on-policy against async (staleness 1), same recipe,
same run. Prints the ratio and the learner's idle share (the part of a step the learner
spends waiting for groups or weight sync rather than training).

    .venv/bin/python bench/loop.py [--steps 5] [--design-workload] [--learner-threads N] [--max-num-seqs N]

`--design-workload` is DESIGN.md's target shape (hidden 512, 8 layers, 16 prompts x 8
completions x 128 tokens); the default is a smaller one that finishes in a few minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

# Run as a script, this folder comes first on sys.path and bench/learner.py would shadow the
# `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RECIPE = """
[model]
path = "{out}/model"
[model.tiny]
hidden_size = {hidden}
num_layers = {layers}
[data]
train_path = "{out}/data/train.parquet"
# About 48 prompt tokens, DESIGN.md's workload (3.5 TFLOP a step); the r1_zero preamble alone
# is ~300 characters, which would make every step several times that work.
template = "User: {{prompt}} Think, then answer.\\nAssistant: <think>"
max_prompt_tokens = 64
[data.synthetic]
task = "arithmetic"
train_rows = 2000
eval_rows = 0
[rollout]
group_size = 8
prompts_per_step = {prompts}
max_new_tokens = {tokens}
max_model_len = 256
kv_cache_gb = 0.5
enforce_eager = true
max_num_seqs = {max_num_seqs}
[reward]
weights = {{ arithmetic = 1.0, format = 0.1 }}
workers_per_scorer = 1
[learner]
num_ranks = 1
zero_stage = 2
lr = 1e-5
micro_batch_size = 8
cpu_threads = {threads}
[cluster]
num_cpus = 4
rollout_cpus = 1
learner_cpus = 1
scorer_cpus = 0.5
timeout_s = 900
[run]
output_dir = "{out}/{name}"
steps = {steps}
"""


def measure(recipe_path: Path, name: str, staleness: int) -> dict:
    from cluster.recipe import load_recipe
    from cluster.loop import train
    from cluster.output.run_log import read_metrics

    recipe = load_recipe(recipe_path, ["--run.output_dir", str(recipe_path.parent / name),
                                       "--algorithm.max_staleness", str(staleness)])
    metrics = read_metrics(train(recipe))[1:]  # the first step carries start-up costs
    split = {key: statistics.mean(m[f"time/{key}"] for m in metrics)
             for key in ("step", "generate", "score", "train", "sync")}
    split["learner_idle_share"] = 1 - split["train"] / split["step"]
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--design-workload", action="store_true")
    parser.add_argument("--max-num-seqs", type=int, default=0,
                        help="rollout.max_num_seqs (0: vLLM's default, every sequence at once)")
    parser.add_argument("--learner-threads", type=int, default=0,
                        help="learner.cpu_threads (0: Ray's default, one per reserved CPU)")
    args = parser.parse_args()
    shape = dict(hidden=512, layers=8, prompts=16, tokens=128) if args.design_workload else \
        dict(hidden=256, layers=4, prompts=8, tokens=64)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "recipe.toml"
        recipe.write_text(RECIPE.format(out=tmp, name="run", steps=args.steps, threads=args.learner_threads,
                                      max_num_seqs=args.max_num_seqs, **shape))
        on_policy = measure(recipe, "on-policy", 0)
        asynchronous = measure(recipe, "async", 1)
    print(f"workload: {shape}, learner threads {args.learner_threads or 'Ray default'}, "
          f"max_num_seqs {args.max_num_seqs or 'vLLM default'}; "
          f"mean over steps 2..{args.steps}")
    for label, split in (("on-policy", on_policy), ("async (staleness 1)", asynchronous)):
        print(f"  {label:<20} {1 / split['step']:.3f} steps/s; step {split['step']:.1f}s of which waiting for groups "
              f"{split['generate']:.1f}s + score {split['score']:.1f}s + train {split['train']:.1f}s + "
              f"sync {split['sync']:.1f}s; learner idle {split['learner_idle_share']:.0%}")
    print(f"ratio async / on-policy steps/s: {on_policy['step'] / asynchronous['step']:.2f}")


if __name__ == "__main__":
    main()
