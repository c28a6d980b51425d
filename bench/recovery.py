"""What a dead actor costs a run, per role: the time from its death to its replacement taking
work, and the steps that lost it against their neighbours' in the same run.

Runs `aha train` on a tiny CPU recipe (2 rollout workers, 2 learner ranks, a checkpoint every
step) with fault injection (cluster/run/chaos.py): rollout worker 0's actor process is killed
as step `--kill-at` starts sampling, its engine processes during step `--push-kill-at`'s weight
push, and the last learner rank just before step `--learner-kill-at`'s optimizer step. Then
`aha distill` on the same tiny model (its own teacher) loses its teacher's process as step
`--kill-at` starts. Reads the driver's output as it comes (each line time-stamped on arrival)
and the runs' metrics:

- death -> replacement: from the "chaos: killing" line to the line that says the role took
  work again (a worker: once its engine is on the current weights; the learner group: once it
  has loaded the last checkpoint and pushed it to the engines; the teacher: once it is loaded);
- each affected step's time over the median of the steps that lost nothing (the ratio that
  says what a death costs a run), and `time/recovery` out of that step. A learner death also
  costs the steps since the last checkpoint, trained again: the redone step is the one shown.

    .venv/bin/python bench/recovery.py [--steps 8 --kill-at 3 --push-kill-at 5 --learner-kill-at 7 --keep DIR]
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
    "algorithm": None, "learner.micro_batch_size": 8, "cluster.num_cpus": 5, "run.checkpoint_every": 1,
}
# The same tiny model distilled from itself, one learner rank beside the teacher.
DISTILL = {**OVERRIDES, "rollout.num_workers": None, "reward.weights": {"arithmetic": 1.0},
           "learner.num_ranks": None, "cluster.teacher_cpus": 0.5, "cluster.num_cpus": 4, "model.tiny": None}
# The line that says a role took work again after a death, per role that chaos kills.
RECOVERED = {"rollout": "replaced, on weight version", "engine": "replaced, on weight version",
             "learner": "learner group restarted from", "teacher": "teacher 0 replaced in"}


def run_with_faults(out: Path, command: str, overrides: dict, chaos: str) -> list[tuple[float, str]]:
    """Run the recipe with AHA_CHAOS = `chaos`; returns its output lines with their arrival times."""
    recipe = write_tiny_recipe(out / "recipe.toml", overrides)
    env = {**os.environ, "AHA_CHAOS": chaos, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([AHA, command, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=out, env=env)
    lines = []
    for line in process.stdout:
        lines.append((time.monotonic(), line.rstrip()))
        if line.startswith("[aha]") and "it/s" not in line:
            print(line.rstrip(), flush=True)
    if process.wait() != 0:
        sys.exit("the run failed:\n" + "\n".join(text for _, text in lines[-30:]))
    return lines


def death_to_replacement(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """(role, seconds) from each "chaos: killing ROLE" line to the line saying ROLE took work again."""
    spans, killed = [], None
    for at, text in lines:
        if "[aha] chaos: killing " in text:
            killed = (text.split("[aha] chaos: killing ")[1].split()[0], at)
        elif killed is not None and RECOVERED[killed[0]] in text:
            spans.append((killed[0], at - killed[1]))
            killed = None
    return spans


def report(title: str, out: Path, lines: list, affected: dict[int, str]) -> None:
    """Death -> replacement per fault, and each affected step against the median quiet step."""
    metrics = {m["step"]: m for m in map(json.loads, (out / "run" / "metrics.jsonl").read_text().splitlines())
               if m.get("step", 0) > 0}
    # Step 1 warms the engines up; the others that lost nothing are the baseline.
    quiet = [m["time/step"] for s, m in metrics.items() if s not in affected and s > 1]
    baseline = statistics.median(quiet)
    print(f"\n{title}")
    for role, span in death_to_replacement(lines):
        print(f"  {role:8s} killed: death -> replacement taking work {span:6.1f} s = {span / baseline:5.1f}x the "
              "median step")
    print(f"  median step time of the {len(quiet)} steps that lost nothing: {baseline:.2f} s")
    for step, what in sorted(affected.items()):
        m = metrics[step]
        print(f"  step {step} ({what}): {m['time/step']:6.1f} s = {m['time/step'] / baseline:5.1f}x the median "
              f"(recovery {m['time/recovery']:.1f} s, prompts re-queued {m['recovery/prompts_requeued']:.0f})")
    last = metrics[max(metrics)]
    print("  restarts: " + ", ".join(f"{role} {last[f'restarts/{role}']:.0f}"
                                     for role in ("rollout", "scorer", "learner", "teacher")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--kill-at", type=int, default=3, help="step whose sampling loses worker 0's actor "
                        "(and, distilling, the teacher)")
    parser.add_argument("--push-kill-at", type=int, default=5, help="step whose weight push loses worker 0's engine")
    parser.add_argument("--learner-kill-at", type=int, default=7, help="step whose optimizer step loses a rank")
    parser.add_argument("--keep", default="", help="run in this (new) directory and keep it")
    args = parser.parse_args()
    out = Path(args.keep or tempfile.mkdtemp(prefix="aha-bench-recovery-"))
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "distill").mkdir(parents=True, exist_ok=True)
    chaos = f"rollout@generate:{args.kill_at},engine@push:{args.push_kill_at},learner@train:{args.learner_kill_at}"
    lines = run_with_faults(out / "train", "train", {**OVERRIDES, "run.steps": args.steps}, chaos)
    report("aha train (tiny model, 2 workers, 2 learner ranks, a checkpoint every step, this machine)", out / "train",
           lines, {args.kill_at: "worker killed", args.push_kill_at: "engine killed",
                   args.learner_kill_at: "a learner rank killed, redone"})
    model = str(out / "train" / "model")  # the tiny model the train run built: student and teacher
    lines = run_with_faults(out / "distill", "distill", {
        **DISTILL, "run.steps": args.steps, "model.path": model, "distill": {"teacher": model, "loss": "kl"}},
        f"teacher@generate:{args.kill_at}")
    report("aha distill (the same model as its own teacher, 1 learner rank)", out / "distill", lines,
           {args.kill_at: "teacher killed"})


if __name__ == "__main__":
    main()
