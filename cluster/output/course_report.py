"""The course's reports: a table and a figure per experiment, drawn from its runs' metrics.jsonl.

Every number in a report is read from the runs' own records, and every seed that was run is
shown, with the range over them: a result is never one lucky seed.

matplotlib is imported where a figure is drawn, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
        figure, left, right = _two_panels()
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
        _save(figure, f"Self-verification emerging from RL on the final answer ({seeds_label(seeds)})", tmp,
              legend="upper left")

    atomic_write(path, draw)
    return path


def _two_panels():
    """A figure of two panels side by side, as every course figure is."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    return (figure, *figure.subplots(1, 2))


def _save(figure, title: str, tmp: str, legend: str = "best") -> None:
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


def _line(axes, records: Sequence[Mapping], key: str, label: str | None, color: str, style: str = "-") -> None:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
        steps, values = zip(*points)
        axes.plot(steps, values, style, color=color, label=label, alpha=0.85,
                  marker="o" if len(points) < 12 else None, markersize=3)


# ---------------------------------------------------------------------------------------
# The GRPO ablations (group-size, estimators, kl): runs on the demo's task that differ in one
# thing, compared by their held-out accuracy curve and one training signal per step.

@dataclass(frozen=True)
class Ablation:
    """What one ablation compares: run name -> its label, and the training signal (a
    metrics.jsonl key) that the figure's right panel and the table show beside accuracy."""

    title: str
    runs: Mapping[str, str]
    signal: str
    signal_label: str
    signal_is_share: bool = True  # a share (shown as %) or a plain number
    unmeasured: tuple[str, ...] = ()  # runs that do not measure the signal (no reference model: no KL)

    def signal_of(self, run: str) -> str | None:
        """The run's signal key; None where it does not measure it (shown as '–', not drawn)."""
        return None if run in self.unmeasured else self.signal


GROUP_SIZE = Ablation("Group size G at equal samples per step (G x prompts = the demo's 8 x 16)",
                      {"g2": "G=2", "g4": "G=4", "g8": "G=8", "g16": "G=16"},
                      "zero_adv_group_fraction", "groups with zero advantage (all rewards equal)")
ESTIMATORS = Ablation("Advantage estimators (G=8, no KL)",
                      {"g8": "GRPO", "dr_grpo": "Dr. GRPO", "rloo": "RLOO"},
                      "response_length_mean", "response tokens (training samples)", signal_is_share=False)
KL = Ablation("KL to the frozen base model (GRPO, G=8)",
              {"g8": "no KL", "kl-0.1": "KL, weight 0.1", "kl-1": "KL, weight 1"},
              "learner/kl", "KL to the base per token (training samples)", signal_is_share=False,
              unmeasured=("g8",))


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def number_range(values: Sequence[float | None]) -> str:
    """'0.12–0.31' over the seeds, as value_range but for plain numbers."""
    known = sorted(v for v in values if v is not None)
    if not known:
        return "–"
    return _number(known[0]) if _number(known[0]) == _number(known[-1]) else f"{_number(known[0])}–{_number(known[-1])}"


def _mean(records: Sequence[Mapping], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return sum(values) / len(values) if values else None


def evaluations(records: Sequence[Mapping]) -> str:
    """Held-out accuracy at every evaluation, in order: '14.5% → 60.2% → 98.0%'."""
    values = [r["eval/accuracy"] for r in records if isinstance(r.get("eval/accuracy"), (int, float))]
    return " → ".join(percent(v) for v in values) or "–"


def ablation_table(ablation: Ablation, seeds: Mapping[int, SeedRuns]) -> str:
    """Markdown: per seed and run, held-out accuracy at each evaluation, the training signal's
    mean over the steps and its last value; then per run the range over the seeds."""
    show = percent if ablation.signal_is_share else _number
    lines = [f"{ablation.title}.\n",
             f"| seed | run | held-out accuracy at each evaluation | {ablation.signal_label}: mean / last step |",
             "| --- | --- | --- | --- |"]
    for seed, runs in seeds.items():
        for name, label in ablation.runs.items():
            records = runs.get(name, [])
            lines.append(f"| {seed} | {label} | {evaluations(records)} | "
                         f"{show(_mean(records, ablation.signal_of(name)))} / "
                         f"{show(last(records, ablation.signal_of(name)))} |")
    for name, label in ablation.runs.items():
        finals = [runs[name] for runs in seeds.values() if name in runs]
        if not finals:
            continue
        first = value_range([first_and_last(r, "eval/accuracy")[0] for r in finals])
        after = value_range([last(r, "eval/accuracy") for r in finals])
        means = [_mean(r, ablation.signal_of(name)) for r in finals]
        signal = value_range(means) if ablation.signal_is_share else number_range(means)
        lines.append(f"| all ({len(finals)}) | {label} | {first} → {after} | {signal} (mean) |")
    return "\n".join(lines) + "\n"


def plot_ablation(ablation: Ablation, path: Path, seeds: Mapping[int, SeedRuns]) -> Path:
    """Two panels: held-out accuracy per evaluation and the training signal per step, a colour
    per run and a line per seed."""
    colors = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:purple")

    def draw(tmp: str) -> None:
        figure, left, right = _two_panels()
        for number, runs in enumerate(seeds.values()):
            for color, (name, label) in zip(colors, ablation.runs.items()):
                records = runs.get(name, [])
                _line(left, records, "eval/accuracy", label if number == 0 else None, color)
                _line(right, records, ablation.signal_of(name), label if number == 0 else None, color)
        left.set(title="Held-out accuracy (greedy)", xlabel="RL step", ylabel="accuracy", ylim=(-0.02, 1.02))
        right.set(title=ablation.signal_label, xlabel="RL step")
        if ablation.signal_is_share:
            right.set(ylim=(-0.02, 1.02))
        _save(figure, f"{ablation.title} ({seeds_label(seeds)})", tmp)

    atomic_write(path, draw)
    return path


# ---------------------------------------------------------------------------------------
# Experiment "cot": room to think against the answer forced at once.

def budget_curve(record: Mapping) -> list[tuple[int, float]]:
    """(thinking budget, accuracy) pairs of one evaluation record, by budget."""
    prefix = "eval/acc@budget="
    return sorted((int(key[len(prefix):]), value) for key, value in record.items()
                  if key.startswith(prefix) and isinstance(value, (int, float)))


def _evaluated(records: Sequence[Mapping]) -> list[Mapping]:
    return [r for r in records if isinstance(r.get("eval/accuracy"), (int, float))]


def cot_table(seeds: Mapping[int, SeedRuns]) -> str:
    """Markdown: per seed, held-out accuracy of each run before → after RL, and for the run that
    thinks its accuracy under each thinking budget (forced) before → after; then the ranges."""
    lines = ["| seed | run | held-out accuracy | answer forced at once (budget 0) | accuracy by thinking budget, "
             "after RL |", "| --- | --- | --- | --- | --- |"]
    for seed, runs in seeds.items():
        for name in ("think", "answer-at-once"):
            records = _evaluated(runs.get(name, []))
            curve = budget_curve(records[-1]) if records else []
            forced = change(records, "eval/acc@budget=0") if curve else "–"
            by_budget = ", ".join(f"{budget}: {percent(value)}" for budget, value in curve) or "–"
            lines.append(f"| {seed} | {name} | {change(records, 'eval/accuracy')} | {forced} | {by_budget} |")
    for name in ("think", "answer-at-once"):
        finals = [_evaluated(runs.get(name, [])) for runs in seeds.values()]
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
        figure, left, right = _two_panels()
        for number, runs in enumerate(seeds.values()):
            for name, color in (("think", "tab:orange"), ("answer-at-once", "tab:gray")):
                _line(left, runs.get(name, []), "eval/accuracy", name if number == 0 else None, color)
            evaluated = _evaluated(runs.get("think", []))
            for record, label, style in ((evaluated[:1], "before RL", "--"), (evaluated[-1:], "after RL", "-")):
                curve = budget_curve(record[0]) if record else []
                if curve:
                    budgets, values = zip(*curve)
                    right.plot(budgets, values, style, color="tab:orange", marker="o", markersize=3, alpha=0.85,
                               label=label if number == 0 else None)
        left.set(title="Held-out accuracy over RL", xlabel="RL step", ylabel="accuracy (greedy)", ylim=(-0.02, 1.02))
        right.set(title="Room to think: accuracy by thinking budget (forced)", xlabel="thinking tokens allowed",
                  ylabel="accuracy (greedy)", ylim=(-0.02, 1.02))
        _save(figure, f"Chain of thought as the foundation ({seeds_label(seeds)})", tmp)

    atomic_write(path, draw)
    return path


# ---------------------------------------------------------------------------------------
# Experiment "reasoning": a reasoning model against a direct-answer model from the same base.

REASONING_MODELS = (("base", "reasoning", 0), ("direct", "direct", -1), ("reasoning", "reasoning", -1))


def reasoning_models(runs: SeedRuns) -> dict[str, Mapping]:
    """model -> its evaluation record: the base (the RL run's evaluation before RL), the
    direct-answer model (SFT's last) and the reasoning model (RL's last); those not run yet left out."""
    found = {}
    for model, run, position in REASONING_MODELS:
        evaluated = _evaluated(runs.get(run, []))
        if evaluated:
            found[model] = evaluated[position]
    return found


def reasoning_table(seeds: Mapping[int, SeedRuns]) -> str:
    """Markdown: per seed and model, greedy accuracy, pass@k and maj@k, greedy tokens per answer
    and accuracy with the answer forced at once; then the range over the seeds per model."""
    columns = (("accuracy", "eval/accuracy", percent), ("pass@16", "eval/pass@16", percent),
               ("maj@16", "eval/maj@16", percent), ("tokens per answer", "eval/response_length_mean", _number),
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
        figure, left, right = _two_panels()
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
        _save(figure, f"A reasoning model against a direct-answer model ({seeds_label(seeds)})", tmp)

    atomic_write(path, draw)
    return path
