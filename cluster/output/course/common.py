"""What every course report shares: reading the seeds' records, formatting values and ranges,
and the two-panel figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cluster.output.run_log import read_metrics

# One seed of an experiment: run name -> that run's metrics records.
SeedRuns = Mapping[str, Sequence[Mapping]]


def values_of(records: Sequence[Mapping], key: str | None) -> list[float]:
    """`key`'s logged values in step order (booleans and gaps are not values; key None: none)."""
    return [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]


def first_and_last(records: Sequence[Mapping], key: str | None) -> tuple[float | None, float | None]:
    """`key`'s value at its first and its last logged step (None where it never was)."""
    values = values_of(records, key)
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


def as_number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def number_range(values: Sequence[float | None]) -> str:
    """'0.12–0.31' over the seeds, as value_range but for plain numbers."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return "–"
    low, high = as_number(known[0]), as_number(known[-1])
    return low if low == high else f"{low}–{high}"


def mean_of(records: Sequence[Mapping], key: str | None) -> float | None:
    values = values_of(records, key)
    return sum(values) / len(values) if values else None


def budget_curve(record: Mapping) -> list[tuple[int, float]]:
    """(thinking budget, accuracy) pairs of one evaluation record, by budget."""
    prefix = "eval/acc@budget="
    return sorted((int(key[len(prefix):]), value) for key, value in record.items()
                  if key.startswith(prefix) and isinstance(value, (int, float)))


def evaluated_records(records: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in records if isinstance(r.get("eval/accuracy"), (int, float))]


# ---------------------------------------------------------------------------------------
# Figures: two panels side by side, a colour per run and a line per seed.

def two_panels():
    """A figure of two panels side by side, as every course figure is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    return (figure, *figure.subplots(1, 2))


def save_figure(figure, title: str, tmp: str, legend: str = "best") -> None:
    """Grid and legend on each panel (none where nothing was drawn yet), the title, the PNG."""
    for axes in figure.axes:
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8, loc=legend)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(tmp, format="png")


def seeds_label(seeds: Mapping) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"


def line(axes, records: Sequence[Mapping], key: str, label: str | None, color: str, style: str = "-") -> None:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
        steps, values = zip(*points)
        axes.plot(steps, values, style, color=color, label=label, alpha=0.85,
                  marker="o" if len(points) < 12 else None, markersize=3)
