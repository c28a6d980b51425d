"""The course's reports: a table and a figure per experiment, drawn from its runs' metrics.jsonl.

Every number in a report is read from the runs' own records, and every seed that was run is
shown, with the range over them: a result is never one lucky seed.

matplotlib is imported where a figure is drawn, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cluster.output.run_log import atomic_write, read_metrics

# One seed of an experiment: run name -> that run's metrics records.
SeedRuns = Mapping[str, Sequence[Mapping]]


def first_and_last(records: Sequence[Mapping], key: str) -> tuple[float | None, float | None]:
    """`key`'s value at its first and its last logged step (None where it never was)."""
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return (values[0], values[-1]) if values else (None, None)


def last(records: Sequence[Mapping], key: str) -> float | None:
    return first_and_last(records, key)[1]


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def change(records: Sequence[Mapping], key: str) -> str:
    before, after = first_and_last(records, key)
    return f"{percent(before)} → {percent(after)}"


def value_range(values: Sequence[float | None]) -> str:
    """'12.1–15.2%' over the seeds (one value: that value; none: '–')."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return "–"
    low, high = known[0], known[-1]
    return percent(low) if low == high else f"{100 * low:.1f}–{100 * high:.1f}%"


def read_seeds(experiment_dir: Path, run_names: Sequence[str]) -> dict[int, dict[str, list[dict]]]:
    """seed -> run name -> records, for every seed-<n>/ under `experiment_dir` whose runs all
    logged something (a seed still running, or never started, is left out)."""
    seeds = {}
    for seed_dir in sorted(experiment_dir.glob("seed-*")):
        try:
            seed = int(seed_dir.name.removeprefix("seed-"))
        except ValueError:
            continue
        runs = {name: read_metrics(seed_dir / name) for name in run_names}
        if all(runs.values()):
            seeds[seed] = runs
    return dict(sorted(seeds.items()))


# ---------------------------------------------------------------------------------------
# Experiment "verify": self-verification emerging, against a control without checks.

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
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(11, 4.2), dpi=100)
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2)
        curves = (("verify_rate", "checks (training samples)", "tab:purple"),
                  ("correction_rate", "self-corrections (training samples)", "tab:blue"),
                  ("eval/accuracy", "held-out accuracy (greedy)", "tab:orange"))
        for number, runs in enumerate(seeds.values()):
            for key, label, color in curves:
                _line(left, runs.get("checks", []), key, label if number == 0 else None, color)
            for name, style in (("checks", "-"), ("control", "--")):
                _line(right, runs.get(name, []), "eval/accuracy", f"corpus: {name}" if number == 0 else None,
                      "tab:orange" if name == "checks" else "tab:gray", style)
        left.set(title="Corpus with checks: checking, correcting, accuracy", xlabel="RL step", ylabel="share",
                 ylim=(-0.02, 1.02))
        right.set(title="Held-out accuracy: with checks vs control", xlabel="RL step", ylabel="accuracy (greedy)",
                  ylim=(-0.02, 1.02))
        for axes in (left, right):
            axes.grid(alpha=0.3)
            if axes.get_legend_handles_labels()[0]:  # no seed finished yet: no lines, no legend
                axes.legend(fontsize=8, loc="upper left")
        figure.suptitle(f"Self-verification emerging from RL on the final answer ({len(seeds)} seeds)")
        figure.tight_layout()
        figure.savefig(tmp, format="png")

    atomic_write(path, draw)
    return path


def _line(axes, records: Sequence[Mapping], key: str, label: str | None, color: str, style: str = "-") -> None:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
        steps, values = zip(*points)
        axes.plot(steps, values, style, color=color, label=label, alpha=0.85,
                  marker="o" if len(points) < 12 else None, markersize=3)
