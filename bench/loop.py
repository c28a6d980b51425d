"""The whole loop: step time, its split and its overhead, and time to first step by phase.

For each workload, aha trains a few steps (on-policy); then, in the same process, the last
step's very work is done again without aha: its prompts through vLLM's offline
`LLM.generate` (one request per completion, each exactly as long as aha's), and its tokens
through plain torch forward/backward/AdamW (bench/learner.py's baseline, padded
micro-batches). The overhead is the step time minus those two: what the actors, Ray calls,
scoring, the weight push and the bookkeeping add. `--async` also runs staleness 1 and prints
its ratio to on-policy.

    .venv/bin/python bench/loop.py [--workload demo|small|design] [--steps 5] [--async]
                                   [--learner-threads N] [--max-num-seqs N]
                                   [--engine-core spawned|in_process]

Workloads: `demo` is `make demo`'s RL recipe (deploy/recipes/arith-zero-cpu.toml, its cached
base model and data under runs/demo, made first if missing; its held-out evaluation before RL
counts in the time to first step); `small` a 256-wide 4-layer model, 8 prompts x 8 x 64 tokens;
`design` the target shape of docs/benchmarks.md (hidden 512, 8 layers, 16 prompts x 8 x 128 tokens).
Targets (issue 16): overhead <= 20% of the demo's step, design <= 30 s/step, demo's time to
first step <= 20 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder comes first on sys.path and bench/learner.py would shadow the
# `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "deploy/recipes/arith-zero-cpu.toml"
SHAPES = {"small": dict(hidden=256, layers=4, prompts=8, tokens=64),
          "design": dict(hidden=512, layers=8, prompts=16, tokens=128)}

RECIPE = """
[model]
path = "{out}/model"
[model.tiny]
hidden_size = {hidden}
num_layers = {layers}
[data]
train_path = "{out}/data/train.parquet"
# About 48 prompt tokens, the design workload's (3.5 TFLOP a step); the r1_zero preamble alone
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


def run_aha(recipe, name: str, staleness: int) -> tuple[dict, list[dict], Path]:
    """Train `recipe`; the mean split over steps 2.., the first step's start-up phases, the run."""
    from cluster.commands.train import train
    from cluster.output.run_log import read_metrics
    from cluster.recipe.load import recipe_from_dict, recipe_to_dict

    table = recipe_to_dict(recipe)
    table["run"]["output_dir"] = str(Path(table["run"]["output_dir"]).with_name(name))
    table["algorithm"]["max_staleness"] = staleness
    out = train(recipe_from_dict(table))
    steps = [m for m in read_metrics(out) if m["step"] >= 1]
    later = steps[1:] or steps  # the first step carries start-up costs
    split = {key: statistics.mean(m.get(f"time/{key}", 0.0) for m in later)
             for key in ("step", "generate", "score", "train", "sync", "learner_busy")}
    split["step_1"] = steps[0]["time/step"]
    split["learner_idle_share"] = statistics.mean(m["learner_idle_share"] for m in later)
    split["learner_calls"] = statistics.mean(m.get("learner/accumulate_calls", 0) for m in later)
    startup = {k.removeprefix("startup/"): v for k, v in steps[0].items() if k.startswith("startup/")}
    startup["learner_parts"] = {k.removeprefix("startup_learner/"): v for k, v in steps[0].items()
                                if k.startswith("startup_learner/")}
    return split, startup, out


def last_step_work(recipe, out: Path):
    """The last step's prompts (token ids, one entry per completion) and completion lengths."""
    import pyarrow.parquet as pq

    from cluster.inputs.data import PromptRow
    from cluster.inputs.prompts import encode_prompts
    from cluster.startup.preflight import load_tokenizer

    last = sorted((out / "rollouts").glob("step-*.parquet"))[-1]
    rows = pq.read_table(last, columns=["prompt", "num_tokens"]).to_pylist()
    tokenizer = load_tokenizer(recipe, str(out / "model-files"))
    prompts = encode_prompts(recipe, tokenizer, [PromptRow(index=i, prompt=r["prompt"], fields={})
                                                 for i, r in enumerate(rows)])
    return prompts, [max(int(r["num_tokens"]), 1) for r in rows]


def raw_generate_s(recipe, model_path: str, prompts: list[list[int]], lengths: list[int]) -> float:
    """Seconds for vLLM's offline `LLM.generate` to sample exactly these completions (same
    engine settings as the rollout worker's, after a warm-up call)."""
    from vllm import LLM, SamplingParams

    from cluster.startup.specs import engine_spec

    spec = engine_spec(recipe, model_path)
    llm = LLM(model=model_path, dtype="float32", max_model_len=spec.max_model_len, seed=spec.seed,
              kv_cache_memory_bytes=int(spec.kv_cache_gb * 2**30), enforce_eager=spec.enforce_eager,
              enable_chunked_prefill=False, **({"max_num_seqs": spec.max_num_seqs} if spec.max_num_seqs else {}))
    params = [SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=1.0, logprobs=0)
              for n in lengths]
    requests = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(requests[:4], params[:4], use_tqdm=False)  # warm-up
    started = time.perf_counter()
    llm.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    llm.llm_engine.engine_core.shutdown()
    return elapsed


BARE_ENGINE = """
import os, sys, time
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process
started = time.perf_counter()
from vllm import LLM
imported = time.perf_counter()
LLM(model=sys.argv[1], dtype="float32", max_model_len=int(sys.argv[2]), kv_cache_memory_bytes=int(sys.argv[3]),
    enforce_eager=sys.argv[4] == "1", enable_chunked_prefill=False)
print(imported - started, time.perf_counter() - imported)
"""


def bare_engine_start_s(recipe, model_path: str) -> tuple[float, float]:
    """(import, build) seconds of one bare vLLM engine with its core in-process, on the same
    model and engine settings, in a fresh interpreter: the floor the roles' start is held to."""
    import subprocess

    from cluster.startup.specs import engine_spec

    spec = engine_spec(recipe, model_path)
    done = subprocess.run([sys.executable, "-c", BARE_ENGINE, model_path, str(spec.max_model_len),
                           str(int(spec.kv_cache_gb * 2**30)), "1" if spec.enforce_eager else "0"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"the bare engine failed: {done.stderr[-2000:]}")
    imported, built = map(float, done.stdout.split()[-2:])
    return imported, built


def plain_train_s(recipe, model_path: str, prompts: list[list[int]], lengths: list[int]) -> float:
    """Seconds for one plain-torch forward/backward/AdamW step on the same tokens."""
    import random

    from learner.batching import TrainSequence

    learner_bench = _load("learner.py")
    rng = random.Random(0)
    sequences = [TrainSequence(prompt_ids=p, completion_ids=[rng.randrange(10, 100) for _ in range(n)],
                               behaviour_logprobs=[-5.0] * n, advantage=rng.choice([-1.0, 1.0]))
                 for p, n in zip(prompts, lengths)]
    tokens = sum(lengths)
    tokens_per_s = learner_bench.plain_torch_tokens_per_s(model_path, sequences, recipe.learner.micro_batch_size,
                                                          steps=2, lr=recipe.learner.lr)
    return tokens / tokens_per_s


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"aha_bench_{name[:-3]}", Path(__file__).with_name(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def workload_recipe(args, tmp: str):
    from cluster.recipe import load_recipe

    common = ["--run.steps", str(args.steps), "--learner.cpu_threads", str(args.learner_threads),
              "--rollout.max_num_seqs", str(args.max_num_seqs)]
    if args.engine_core:
        common += ["--rollout.engine_core", args.engine_core]
    if args.workload == "demo":
        # The demo's own recipe, its cached base model and data (relative to the repository).
        return load_recipe(DEMO_RECIPE, [*common, "--run.output_dir", f"{tmp}/run", "--eval.every", "0"])
    path = Path(tmp) / "recipe.toml"
    path.write_text(RECIPE.format(out=tmp, name="run", steps=args.steps, threads=args.learner_threads,
                                  max_num_seqs=args.max_num_seqs, **SHAPES[args.workload]))
    return load_recipe(path, common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("demo", "small", "design"), default="demo")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--async", dest="run_async", action="store_true", help="also run staleness 1")
    parser.add_argument("--max-num-seqs", type=int, default=0,
                        help="rollout.max_num_seqs (0: vLLM's default, every sequence at once)")
    parser.add_argument("--learner-threads", type=int, default=0,
                        help="learner.cpu_threads (0: Ray's default, one per reserved CPU)")
    parser.add_argument("--engine-core", choices=("spawned", "in_process"), default="",
                        help="rollout.engine_core (default: the recipe's)")
    args = parser.parse_args()
    if args.workload == "demo":
        os.chdir(REPO)  # the demo recipe's paths are relative to the repository
    with tempfile.TemporaryDirectory() as tmp:
        recipe = workload_recipe(args, tmp)
        split, startup, out = run_aha(recipe, "on-policy", 0)
        bare_import_s, bare_build_s = bare_engine_start_s(recipe, recipe.model.path)
        asynchronous = run_aha(recipe, "async", 1)[0] if args.run_async else None
        model_path = recipe.model.path  # the base model: the same shape, so the same cost
        prompts, lengths = last_step_work(recipe, out)
        generate_s = raw_generate_s(recipe, model_path, prompts, lengths)
        train_s = plain_train_s(recipe, model_path, prompts, lengths)
    overhead = split["step"] - generate_s - train_s
    print(f"workload {args.workload}: {recipe.rollout.prompts_per_step} prompts x {recipe.rollout.group_size} "
          f"completions, {sum(lengths)} completion tokens in the last step; mean over steps 2..{args.steps}")
    print(f"  aha on-policy: step {split['step']:.2f} s = waiting for groups {split['generate']:.2f} + "
          f"score {split['score']:.2f} + train {split['train']:.2f} + sync {split['sync']:.2f} (+ the rest); "
          f"learner busy {split['learner_busy']:.2f} s in {split['learner_calls']:.1f} calls, "
          f"idle {split['learner_idle_share']:.0%}")
    print(f"  the same work without aha: LLM.generate {generate_s:.2f} s + plain torch step {train_s:.2f} s "
          f"= {generate_s + train_s:.2f} s")
    print(f"  overhead: {overhead:.2f} s = {overhead / split['step']:.0%} of the step "
          f"(ratio step / (generate + train) = {split['step'] / (generate_s + train_s):.2f})")
    # The tokenizer and the checks load beside Ray's start and the roles'; `inputs_wait` is what
    # was left of them once the roles were up. The rest of the phases follow one another.
    print(f"  time to first step: {startup.get('to_first_step', 0.0):.1f} s = "
          + " + ".join(f"{phase} {seconds:.1f}" for phase, seconds in startup.items()
                       if phase not in ("to_first_step", "learner_parts", "first_evaluation_beside_step_1")))
    if "first_evaluation_beside_step_1" in startup:
        print(f"  the evaluation before RL, beside step 1: {startup['first_evaluation_beside_step_1']:.1f} s "
              f"(step 1 took {split['step_1']:.1f} s)")
    roles_s = startup["ray"] + sum(startup.get(p, 0.0) for p in ("teacher", "learner", "engines", "weight_link"))
    bare_s = bare_import_s + bare_build_s
    print(f"  roles up (Ray, learner, engines, weight link): {roles_s:.1f} s against one bare in-process vLLM "
          f"engine's import {bare_import_s:.1f} + build {bare_build_s:.1f} = {bare_s:.1f} s on the same model: "
          f"ratio {roles_s / bare_s:.2f} (target <= 1.25)")
    # The learner's set-up runs beside the engines' start; its parts say which one was slow.
    print("  learner set-up (rank 0): " + " + ".join(f"{part} {seconds:.1f}"
                                                     for part, seconds in startup["learner_parts"].items()))
    if asynchronous is not None:
        print(f"  async (staleness 1): step {asynchronous['step']:.2f} s; ratio async / on-policy steps/s "
              f"{split['step'] / asynchronous['step']:.2f}")


if __name__ == "__main__":
    main()
