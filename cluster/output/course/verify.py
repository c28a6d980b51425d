"""Experiment verify: self-verification emerging, against a control without checks."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cluster.output.course.common import (
    SeedRuns,
    change,
    last,
    line,
    percent,
    save_figure,
    seeds_label,
    two_panels,
    value_range,
)
from cluster.output.run_log import atomic_write


def verify_table(seeds: Mapping[int, SeedRuns]) -> str:
    """Markdown: per seed and run, the held-out (greedy) verify rate, correction rate and
    accuracy before RL → after, and the sampled accuracy of completions that check vs those
    that don't after RL; then the range over the seeds of each run's final values."""
    lines = ["| seed | corpus | verify rate | self-corrections | accuracy | accuracy when checking / not |",
             "| --- | --- | --- | --- | --- | --- |"]
    for seed, runs in seeds.items():
        for name, records in runs.items():
            split = f"{percent(last(records, 'eval/sampled/accuracy_verified'))} / " \
                    f"{percent(last(records, 'eval/sampled/accuracy_unverified'))}"
            lines.append(f"| {seed} | {name} | {change(records, 'eval/verify_rate')} | "
                         f"{change(records, 'eval/correction_rate')} | {change(records, 'eval/accuracy')} | {split} |")
    for name in next(iter(seeds.values()), {}):
        finals = [runs[name] for runs in seeds.values()]
        cells = [value_range([last(r, key) for r in finals])
                 for key in ("eval/verify_rate", "eval/correction_rate", "eval/accuracy")]
        split = " / ".join(value_range([last(r, key) for r in finals])
                           for key in ("eval/sampled/accuracy_verified", "eval/sampled/accuracy_unverified"))
        lines.append(f"| all ({len(finals)}) | {name}, after RL | {cells[0]} | {cells[1]} | {cells[2]} | {split} |")
    return "\n".join(lines) + "\n"


def plot_verify(path: Path, seeds: Mapping[int, SeedRuns]) -> Path:
    """Two panels: the run with checks in its corpus (training verify and correction rate per
    step, held-out accuracy), and held-out accuracy of both corpora side by side; one line per seed."""
    def draw(tmp: str) -> None:
        figure, left, right = two_panels()
        curves = (("verify_rate", "checks (training samples)", "tab:purple"),
                  ("correction_rate", "self-corrections (training samples)", "tab:blue"),
                  ("eval/accuracy", "held-out accuracy (greedy)", "tab:orange"))
        for number, runs in enumerate(seeds.values()):
            for key, label, color in curves:
                line(left, runs.get("checks", []), key, label if number == 0 else None, color)
            for name, style in (("checks", "-"), ("control", "--")):
                line(right, runs.get(name, []), "eval/accuracy", f"corpus: {name}" if number == 0 else None,
                      "tab:orange" if name == "checks" else "tab:gray", style)
        left.set(title="Corpus with checks: checking, correcting, accuracy", xlabel="RL step", ylabel="share",
                 ylim=(-0.02, 1.02))
        right.set(title="Held-out accuracy: with checks vs control", xlabel="RL step", ylabel="accuracy (greedy)",
                  ylim=(-0.02, 1.02))
        save_figure(figure, f"Self-verification emerging from RL on the final answer ({seeds_label(seeds)})", tmp,
              legend="upper left")

    atomic_write(path, draw)
    return path
