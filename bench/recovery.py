"""What a dead rollout worker costs: the time from its death to its replacement taking work,
and the time of the step that lost it against its neighbours' in the same run.

Runs `aha train` on a tiny CPU recipe (2 rollout workers, 2 learner ranks) with fault
injection (cluster/run/chaos.py): rollout worker 0's actor process is killed as step `--kill-at`
starts sampling, and its engine processes during step `--push-kill-at`'s weight push. Reads
the driver's output as it comes (each line time-stamped on arrival) and the run's metrics:

- death -> replacement: from the "chaos: killing" line to the "replaced" line, which is
  printed once the new engine is on the current weights, i.e. ready to take work;
- the affected step's time over the median of the steps that lost nothing (the ratio that
  says what a death costs a run), and `time/recovery` out of that step.

    .venv/bin/python bench/recovery.py [--steps 8 --kill-at 3 --push-kill-at 6 --keep DIR]
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

from cluster.inputs.tiny_recipe import write_tiny_recipe

AHA = str(Path(sys.executable).with_name("aha"))
# The tiny recipe with a second rollout worker (the one that dies has a neighbour) and longer
# steps than the tests' (8 groups of 8, 48 tokens), so that a step's time is worth comparing.
OVERRIDES = {
    "data.eval_path": "", "data.synthetic.train_rows": 256, "data.synthetic.eval_rows": 0, "eval": None,
    "rollout.num_workers": 2, "rollout.group_size": 8, "rollout.prompts_per_step": 8, "rollout.max_new_tokens": 48,
    "algorithm": None, "learner.micro_batch_size": 8, "cluster.num_cpus": 5, "run.checkpoint_every": None,
}


def run_with_faults(out: Path, steps: int, chaos: str) -> list[tuple[float, str]]:
    """Run the recipe with AHA_CHAOS = `chaos`; returns its output lines with their arrival times."""
    recipe = write_tiny_recipe(out / "recipe.toml", {**OVERRIDES, "run.steps": steps})
    env = {**os.environ, "AHA_CHAOS": chaos, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([AHA, "train", str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=out, env=env)
    lines = []
    for line in process.stdout:
        lines.append((time.monotonic(), line.rstrip()))
        if line.startswith("[aha]") and "it/s" not in line:
            print(line.rstrip(), flush=True)
    if process.wait() != 0:
        sys.exit("the run failed:\n" + "\n".join(text for _, text in lines[-30:]))
    return lines


def death_to_replacement(lines: list[tuple[float, str]]) -> list[float]:
    """Seconds from each "chaos: killing" line to the next "replaced" line."""
    spans, killed_at = [], None
    for at, text in lines:
        if "[aha] chaos: killing" in text:
            killed_at = at
        elif killed_at is not None and "replaced, on weight version" in text:
            spans.append(at - killed_at)
            killed_at = None
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--kill-at", type=int, default=3, help="step whose sampling loses worker 0's actor")
    parser.add_argument("--push-kill-at", type=int, default=6, help="step whose weight push loses worker 0's engine")
    parser.add_argument("--keep", default="", help="run in this (new) directory and keep it")
    args = parser.parse_args()
    out = Path(args.keep or tempfile.mkdtemp(prefix="aha-bench-recovery-"))
    out.mkdir(parents=True, exist_ok=True)
    lines = run_with_faults(out, args.steps, f"rollout@generate:{args.kill_at},engine@push:{args.push_kill_at}")
    metrics = {m["step"]: m for m in map(json.loads, (out / "run" / "metrics.jsonl").read_text().splitlines())
               if m.get("step", 0) > 0}
    affected = {args.kill_at, args.push_kill_at}
    # Step 1 warms the engines up; the others that lost nothing are the baseline.
    quiet = [m["time/step"] for s, m in metrics.items() if s not in affected and s > 1]
    baseline = statistics.median(quiet)
    print("\nrecovery of a dead rollout worker (tiny model, 2 workers, 2 learner ranks, this machine)")
    for span, what in zip(death_to_replacement(lines), ("actor killed while sampling", "engine killed in push")):
        print(f"  {what:30s} death -> replacement taking work: {span:6.1f} s")
    print(f"  median step time of the {len(quiet)} steps that lost nothing: {baseline:.2f} s")
    for step in sorted(affected):
        m = metrics[step]
        print(f"  step {step}: {m['time/step']:6.1f} s = {m['time/step'] / baseline:5.1f}x the median "
              f"(recovery {m['time/recovery']:.1f} s, prompts re-queued {m['recovery/prompts_requeued']:.0f})")
    last = metrics[max(metrics)]
    print(f"  restarts: rollout {last['restarts/rollout']:.0f}, scorer {last['restarts/scorer']:.0f}")


if __name__ == "__main__":
    main()
