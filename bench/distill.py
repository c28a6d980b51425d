"""Teacher scoring throughput (on-policy distillation): aha's Teacher against a plain forward.

1. The frozen teacher scores the student's samples one group at a time, as `aha distill` calls
   it: G completions of one prompt per call. Measured on the same model and the same groups:
   - baseline: a plain transformers forward of the group's G sequences in this process, then
     log-softmax over the completion positions, the sampled tokens' logprobs and the argmax;
   - the `Teacher` class in this process (`actors/teacher.py`);
   - the teacher actor through `TeacherPool` (one Ray actor with the same cores), every group
     submitted at once and collected, as the driver overlaps scoring with generation.
   Prints completion tokens scored per second and the ratios to the baseline (target >= 0.8).
   Rounds alternate the contenders, so a loaded machine slows them alike; each keeps its best.
2. The time split of a distillation step (generation, reward scoring, teacher scoring, learner,
   weight sync), read from an `aha distill` run's metrics.jsonl (`--run`, by default the
   distillation demo's stage, runs/distill/distill), its first step left out (warm-up).

    .venv/bin/python bench/distill.py [--models 128x2,512x8 --groups 16 --group-size 8] [--run DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and `bench/learner.py` would
# shadow the `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def make_groups(groups: int, group_size: int, prompt_len: int, completion_len: int, vocab: int,
                seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """(prompt ids, G completion ids) per group; prompts of prompt_len +- 4 tokens."""
    rng = random.Random(seed)
    workload = []
    for _ in range(groups):
        prompt = [rng.randrange(vocab) for _ in range(prompt_len + rng.randint(-4, 4))]
        workload.append((prompt, [[rng.randrange(vocab) for _ in range(completion_len)] for _ in range(group_size)]))
    return workload


def plain_forward(model, prompt: list[int], completions: list[list[int]]) -> tuple[list, list]:
    """The baseline for one group: its G sequences in one forward (equal lengths: no padding)."""
    ids = torch.tensor([prompt + completion for completion in completions])
    logp = torch.log_softmax(model(input_ids=ids).logits[:, len(prompt) - 1:-1].float(), dim=-1)
    return logp.gather(-1, ids[:, len(prompt):, None]).squeeze(-1).tolist(), logp.argmax(-1).tolist()


def teacher_spec(model_dir, threads: int):
    from cluster.wire.teacher import TeacherSpec

    # A group (8 x ~68 tokens) fits one forward, as in the baseline.
    return TeacherSpec(model_path=str(model_dir), tokenizer_path="", dtype="float32", device="cpu",
                       max_batch_tokens=16384, cpu_threads=threads, trust_remote_code=False)


def measure_model(model_dir, workload, *, rounds: int, threads: int) -> dict[str, float]:
    """Best completion tokens/s of each contender over `rounds` alternating rounds."""
    import ray
    from transformers import AutoModelForCausalLM

    from actors.teacher import Teacher
    from cluster.roles.teacher_pool import TeacherPool

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    plain = Teacher(teacher_spec(model_dir, threads))
    ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False)
    pool = TeacherPool(teacher_spec(model_dir, threads), 1, cpus_per_teacher=threads, gpus_per_teacher=0,
                       timeout_s=600)

    def baseline():
        with torch.inference_mode():
            for prompt, completions in workload:
                plain_forward(model, prompt, completions)

    def through_pool():
        pending = [pool.submit([prompt] * len(completions), completions) for prompt, completions in workload]
        for call in pending:
            pool.collect(call)

    contenders = {
        "plain transformers forward": baseline,
        "Teacher class": lambda: [plain.score([p] * len(c), c) for p, c in workload],
        "teacher actor (TeacherPool, Ray)": through_pool,
    }
    tokens = sum(len(c) for _, completions in workload for c in completions)
    best = dict.fromkeys(contenders, float("inf"))
    try:
        for round_index in range(rounds + 1):  # round 0 warms up: kernels, allocator, the actor's first call
            for name, run in contenders.items():
                start = time.perf_counter()
                run()
                if round_index:
                    best[name] = min(best[name], time.perf_counter() - start)
    finally:
        pool.shutdown()
        ray.shutdown()
    return {name: tokens / seconds for name, seconds in best.items()}


SPLIT = (("generate", "waiting for generation"), ("score", "reward scoring"),
         ("teacher", "teacher scoring, not hidden"), ("train", "learner forward/backward + step"),
         ("sync", "weight push"))


def step_split(args) -> None:
    """2) The mean time split of an `aha distill` run's steps (after the first), from its
    metrics.jsonl: each part's seconds and share of the step."""
    from cluster.output.run_log import read_metrics

    steps = [r for r in read_metrics(args.run) if r.get("step", 0) >= 2 and "time/teacher" in r]
    if not steps:
        print(f"2) no distillation steps in {args.run}/metrics.jsonl: run `aha distill` (or the distillation "
              "demo) first, or pass --run")
        return
    mean = {key: sum(r.get(f"time/{key}", 0.0) for r in steps) / len(steps) for key in ("step", *dict(SPLIT))}
    print(f"2) time split of a distillation step, mean of {len(steps)} steps of {args.run}:")
    for key, title in SPLIT:
        print(f"   {title + ':':34s} {mean[key]:6.3f} s  {mean[key] / mean['step']:5.1%}")
    rest = mean["step"] - sum(mean[key] for key, _ in SPLIT)
    print(f"   {'other (driver, logging)':34s} {rest:6.3f} s  {rest / mean['step']:5.1%}")
    print(f"   {'step':34s} {mean['step']:6.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="128x2", help="comma-separated HIDDENxLAYERS, e.g. 128x2,512x8")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=20)
    parser.add_argument("--completion-len", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--run", default="runs/distill/distill", help="an aha distill run's output directory")
    args = parser.parse_args()

    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec
    from cluster.recipe import Recipe
    from cluster.recipe.schema import TinyModelConfig

    threads = torch.get_num_threads()
    workload = make_groups(args.groups, args.group_size, args.prompt_len, args.completion_len, vocab=250)
    print(f"{args.groups} groups x {args.group_size} completions x {args.completion_len} tokens, prompts of "
          f"{args.prompt_len} +- 4 tokens, one call per group; {threads} threads; best of {args.rounds} rounds")
    for shape in args.models.split(","):
        hidden, layers = (int(n) for n in shape.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            config = TinyModelConfig(hidden_size=hidden, num_layers=layers)
            model_dir = build_tiny_model(f"{tmp}/model", tiny_model_spec(config, Recipe().rollout.max_model_len))
            rates = measure_model(model_dir, workload, rounds=args.rounds, threads=threads)
        baseline = rates["plain transformers forward"]
        print(f"1) model hidden={hidden} layers={layers}:")
        for name, rate in rates.items():
            ratio = "" if name == "plain transformers forward" else f"  ratio {rate / baseline:.2f}"
            print(f"   {name + ':':38s} {rate:9.0f} completion tokens/s{ratio}")
        print("   (target >= 0.8 for the Teacher class and the actor)")
    step_split(args)


if __name__ == "__main__":
    main()
