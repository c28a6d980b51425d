"""Experiment cot: room to think against the answer forced at once."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cluster.output.course.common import (
    SeedRuns,
    budget_curve,
    change,
    evaluated_records,
    last,
    line,
    percent,
    save_figure,
    seeds_label,
    two_panels,
    value_range,
)
from cluster.output.run_log import atomic_write


def cot_table(seeds: Mapping[int, SeedRuns]) -> str:
    """Markdown: per seed, held-out accuracy of each run before → after RL, and for the run that
    thinks its accuracy under each thinking budget (forced) before → after; then the ranges."""
    lines = ["| seed | run | held-out accuracy | answer forced at once (budget 0) | accuracy by thinking budget, "
             "after RL |", "| --- | --- | --- | --- | --- |"]
    for seed, runs in seeds.items():
        for name in ("think", "answer-at-once"):
            records = evaluated_records(runs.get(name, []))
            curve = budget_curve(records[-1]) if records else []
            forced = change(records, "eval/acc@budget=0") if curve else "–"
            by_budget = ", ".join(f"{budget}: {percent(value)}" for budget, value in curve) or "–"
            lines.append(f"| {seed} | {name} | {change(records, 'eval/accuracy')} | {forced} | {by_budget} |")
    for name in ("think", "answer-at-once"):
        finals = [evaluated_records(runs.get(name, [])) for runs in seeds.values()]
        if not any(finals):
            continue
        accuracy = value_range([last(r, "eval/accuracy") for r in finals])
        forced = value_range([last(r, "eval/acc@budget=0") for r in finals])
        lines.append(f"| all ({len(finals)}) | {name}, after RL | {accuracy} | {forced} | |")
    return "\n".join(lines) + "\n"


def plot_cot(path: Path, seeds: Mapping[int, SeedRuns]) -> Path:
    """Two panels: held-out accuracy of both runs over RL (a line per seed), and the accuracy of
    the run that thinks against its thinking budget, before and after RL."""
    def draw(tmp: str) -> None:
        figure, left, right = two_panels()
        for number, runs in enumerate(seeds.values()):
            for name, color in (("think", "tab:orange"), ("answer-at-once", "tab:gray")):
                line(left, runs.get(name, []), "eval/accuracy", name if number == 0 else None, color)
            evaluated = evaluated_records(runs.get("think", []))
            for record, label, style in ((evaluated[:1], "before RL", "--"), (evaluated[-1:], "after RL", "-")):
                curve = budget_curve(record[0]) if record else []
                if curve:
                    budgets, values = zip(*curve)
                    right.plot(budgets, values, style, color="tab:orange", marker="o", markersize=3, alpha=0.85,
                               label=label if number == 0 else None)
        left.set(title="Held-out accuracy over RL", xlabel="RL step", ylabel="accuracy (greedy)", ylim=(-0.02, 1.02))
        right.set(title="Room to think: accuracy by thinking budget (forced)", xlabel="thinking tokens allowed",
                  ylabel="accuracy (greedy)", ylim=(-0.02, 1.02))
        save_figure(figure, f"Chain of thought as the foundation ({seeds_label(seeds)})", tmp)

    atomic_write(path, draw)
    return path
