"""Experiment reasoning: a reasoning model against a direct-answer model from the same base."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cluster.output.course.common import (
    SeedRuns,
    as_number,
    budget_curve,
    evaluated_records,
    number_range,
    percent,
    save_figure,
    seeds_label,
    two_panels,
    value_range,
)
from cluster.output.run_log import atomic_write


REASONING_MODELS = (("base", "reasoning", 0), ("direct", "direct", -1), ("reasoning", "reasoning", -1))


def reasoning_models(runs: SeedRuns) -> dict[str, Mapping]:
    """model -> its evaluation record: the base (the RL run's evaluation before RL), the
    direct-answer model (SFT's last) and the reasoning model (RL's last); those not run yet left out."""
    found = {}
    for model, run, position in REASONING_MODELS:
        evaluated = evaluated_records(runs.get(run, []))
        if evaluated:
            found[model] = evaluated[position]
    return found


def reasoning_table(seeds: Mapping[int, SeedRuns]) -> str:
    """Markdown: per seed and model, greedy accuracy, pass@k and maj@k, greedy tokens per answer
    and accuracy with the answer forced at once; then the range over the seeds per model."""
    columns = (("accuracy", "eval/accuracy", percent), ("pass@16", "eval/pass@16", percent),
               ("maj@16", "eval/maj@16", percent), ("tokens per answer", "eval/response_length_mean", as_number),
               ("answer forced at once", "eval/acc@budget=0", percent))
    lines = ["| seed | model | " + " | ".join(title for title, _, _ in columns) + " |",
             "| --- | --- | " + " | ".join("---" for _ in columns) + " |"]
    for seed, runs in seeds.items():
        for model, record in reasoning_models(runs).items():
            lines.append(f"| {seed} | {model} | " + " | ".join(show(record.get(key)) for _, key, show in columns) + " |")
    for model, _, _ in REASONING_MODELS:
        records = [found[model] for found in map(reasoning_models, seeds.values()) if model in found]
        if records:
            cells = [(value_range if show is percent else number_range)([r.get(key) for r in records])
                     for _, key, show in columns]
            lines.append(f"| all ({len(records)}) | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_reasoning(path: Path, seeds: Mapping[int, SeedRuns]) -> Path:
    """Two panels, a colour per model and a line per seed: accuracy against the thinking budget
    (forced), and pass@k and maj@k against the number of samples k."""
    colors = {"base": "tab:gray", "direct": "tab:blue", "reasoning": "tab:orange"}

    def draw(tmp: str) -> None:
        figure, left, right = two_panels()
        for number, runs in enumerate(seeds.values()):
            for model, record in reasoning_models(runs).items():
                label = model if number == 0 else None
                curve = budget_curve(record)
                if curve:
                    left.plot(*zip(*curve), color=colors[model], marker="o", markersize=3, alpha=0.85, label=label)
                for kind, style in (("pass", "-"), ("maj", "--")):
                    points = sorted((int(key.split("@")[1]), value) for key, value in record.items()
                                    if key.startswith(f"eval/{kind}@") and isinstance(value, (int, float)))
                    if points:
                        right.plot(*zip(*points), style, color=colors[model], marker="o", markersize=3, alpha=0.85,
                                   label=f"{model}: {kind}@k" if number == 0 else None)
        left.set(title="Accuracy by thinking budget (forced)", xlabel="thinking tokens allowed",
                 ylabel="accuracy (greedy)", ylim=(-0.02, 1.02))
        right.set(title="Sampling more: pass@k (solid) and maj@k (dashed)", xlabel="samples k", xscale="log",
                  ylabel="accuracy", ylim=(-0.02, 1.02))
        save_figure(figure, f"A reasoning model against a direct-answer model ({seeds_label(seeds)})", tmp)

    atomic_write(path, draw)
    return path
