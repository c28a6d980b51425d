"""Reward scoring throughput: the `"math"` reward through the RewardScorer actor (a pool of N
worker processes) against the same function called in a loop in this process.

Both sides grade the same deterministic workload: R1-style completions
(`<think>…</think> <answer>…</answer>`) whose answers are integers, fractions, decimals and
LaTeX, some right and some wrong, against per-prompt reference answers written in a different
form, so math-verify does the work. The scorer gets one `score_group` call per prompt (the
group's completions fan out over its workers), first one call at a time, then with several
calls in flight. Prints completions/s of each and the ratio (target: >= 0.8 * N).

    .venv/bin/python bench/rewards.py [--workers N --groups 32 --group-size 8 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from fractions import Fraction
from dataclasses import replace
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and `bench/learner.py` would
# shadow the `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import ray  # noqa: E402

WORDS = "so the total is then we divide by and multiply both sides check again carefully".split()


def forms(value: Fraction) -> list[str]:
    """Ways a model writes `value`: integer, fraction, LaTeX fraction, decimal, math mode."""
    p, q = value.numerator, value.denominator
    if q == 1:
        return [str(p), f"{p}.0", f"\\({p}\\)", f"${p}$", f"\\boxed{{{p}}}"]
    out = [f"{p}/{q}", f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}", f"$\\frac{{{p}}}{{{q}}}$"]
    if 10 ** 6 % q == 0:  # a terminating decimal
        out.append(str(float(value)))
    return out


def make_workload(groups: int, group_size: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """(reference answer, completions) per prompt; about half the completions are right."""
    rng = random.Random(seed)
    workload = []
    for _ in range(groups):
        if rng.random() < 0.4:
            value = Fraction(rng.randint(-50, 500))
        else:
            value = Fraction(rng.randint(-99, 99) or 1, rng.choice([2, 3, 4, 5, 6, 7, 8, 12, 16, 25]))
        reference = rng.choice(forms(value))
        completions = []
        for _ in range(group_size):
            answer = value if rng.random() < 0.5 else value + Fraction(rng.randint(1, 9), rng.choice([1, 2, 3]))
            reasoning = " ".join(rng.choice(WORDS) if rng.random() < 0.8 else str(rng.randint(0, 999))
                                 for _ in range(rng.randint(40, 200)))
            completions.append(f"<think>{reasoning}</think> <answer>{rng.choice(forms(answer))}</answer>")
        workload.append((reference, completions))
    return workload


def single_process(workload, math_reward) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = [math_reward(c, answer=ref) for ref, group in workload for c in group]
    return time.perf_counter() - start, scores


def through_scorer(scorer, workload, in_flight: int) -> tuple[float, list[float]]:
    """Send one score_group call per prompt, keeping at most `in_flight` calls outstanding."""
    start, pending, results = time.perf_counter(), {}, {}
    for index, (ref, group) in enumerate(workload):
        if len(pending) >= in_flight:
            done, _ = ray.wait(list(pending), num_returns=1)
            results[pending.pop(done[0])] = ray.get(done[0])
        pending[scorer.score_group.remote(group, {"answer": ref})] = index
    for call, index in pending.items():
        results[index] = ray.get(call)
    elapsed = time.perf_counter() - start
    return elapsed, [s.total for i in range(len(workload)) for s in results[i]]


def batched_scorer(scorer, workload) -> tuple[float, list[float]]:
    """All groups in one score_groups call: the pool never waits at a group boundary."""
    start = time.perf_counter()
    results = ray.get(scorer.score_groups.remote([(group, {"answer": ref}, None) for ref, group in workload]))
    return time.perf_counter() - start, [s.total for group in results for s in group]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--groups", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=4, help="concurrent score_group calls")
    parser.add_argument("--rounds", type=int, default=3, help="timed repeats; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.workers

    from actors.reward_scorer import RewardScorer
    from cluster.recipe import Recipe
    from cluster.startup.specs import scorer_spec
    from rewards.math_reward import math_reward

    workload = make_workload(args.groups, args.group_size, args.seed)
    total = args.groups * args.group_size
    ray.init(address="local", num_cpus=n + 1, include_dashboard=False, log_to_driver=False)
    try:
        # The pool's workers start (and import the rewards) in the actor's constructor.
        spec = replace(scorer_spec(Recipe()), weights={"math": 1.0}, num_workers=n)
        scorer = ray.remote(RewardScorer).options(num_cpus=1).remote(spec)
        # Warm up both: the first math-verify call imports sympy, in each worker and here.
        _, expected = single_process(workload, math_reward)
        for _ in range(2):
            through_scorer(scorer, workload, args.in_flight)
        timings = {"single process": [], "scorer, 1 call at a time": [],
                   f"scorer, {args.in_flight} calls in flight": [], "scorer, all groups in one call": []}
        for _ in range(args.rounds):
            for label, run in zip(timings, (lambda: single_process(workload, math_reward),
                                            lambda: through_scorer(scorer, workload, 1),
                                            lambda: through_scorer(scorer, workload, args.in_flight),
                                            lambda: batched_scorer(scorer, workload))):
                elapsed, scores = run()
                assert scores == expected, f"{label}: scores differ from the single-process loop"
                timings[label].append(elapsed)
        rates = {label: total / statistics.median(t) for label, t in timings.items()}
        print(f"workload: {args.groups} groups x {args.group_size} completions, "
              f"{sum(expected):.0f}/{total} right; {n} workers; median of {args.rounds} rounds")
        for label, rate in rates.items():
            print(f"  {label:<28} {rate:9.1f} completions/s")
        baseline = rates["single process"]
        sequential, concurrent, batched = list(rates.values())[1:]
        print(f"concurrency across calls: {concurrent / sequential:.2f}x the sequential rate")
        print(f"ratio scorer / single process: {max(sequential, concurrent, batched) / baseline:.2f} "
              f"(target >= 0.8*N = {0.8 * n:.1f}); one group per call: {sequential / baseline:.2f}, "
              f"all groups in one call: {batched / baseline:.2f}")
        ray.get(scorer.close.remote())
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
