"""The GRPO ablations (group-size, estimators, kl): runs on the demo's task that differ in one
thing, compared by their held-out accuracy curve and one training signal per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.output.course.common import (
    SeedRuns,
    as_number,
    first_and_last,
    last,
    line,
    mean_of,
    number_range,
    percent,
    save_figure,
    seeds_label,
    two_panels,
    value_range,
)
from cluster.output.run_log import atomic_write


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


def evaluations(records: Sequence[Mapping]) -> str:
    """Held-out accuracy at every evaluation, in order: '14.5% → 60.2% → 98.0%'."""
    values = [r["eval/accuracy"] for r in records if isinstance(r.get("eval/accuracy"), (int, float))]
    return " → ".join(percent(v) for v in values) or "–"


def ablation_table(ablation: Ablation, seeds: Mapping[int, SeedRuns]) -> str:
    """Markdown: per seed and run, held-out accuracy at each evaluation, the training signal's
    mean over the steps and its last value; then per run the range over the seeds."""
    show = percent if ablation.signal_is_share else as_number
    lines = [f"{ablation.title}.\n",
             f"| seed | run | held-out accuracy at each evaluation | {ablation.signal_label}: mean / last step |",
             "| --- | --- | --- | --- |"]
    for seed, runs in seeds.items():
        for name, label in ablation.runs.items():
            records = runs.get(name, [])
            lines.append(f"| {seed} | {label} | {evaluations(records)} | "
                         f"{show(mean_of(records, ablation.signal_of(name)))} / "
                         f"{show(last(records, ablation.signal_of(name)))} |")
    for name, label in ablation.runs.items():
        finals = [runs[name] for runs in seeds.values() if name in runs]
        if not finals:
            continue
        first = value_range([first_and_last(r, "eval/accuracy")[0] for r in finals])
        after = value_range([last(r, "eval/accuracy") for r in finals])
        means = [mean_of(r, ablation.signal_of(name)) for r in finals]
        signal = value_range(means) if ablation.signal_is_share else number_range(means)
        lines.append(f"| all ({len(finals)}) | {label} | {first} → {after} | {signal} (mean) |")
    return "\n".join(lines) + "\n"


def plot_ablation(ablation: Ablation, path: Path, seeds: Mapping[int, SeedRuns]) -> Path:
    """Two panels: held-out accuracy per evaluation and the training signal per step, a colour
    per run and a line per seed."""
    colors = ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:purple")

    def draw(tmp: str) -> None:
        figure, left, right = two_panels()
        for number, runs in enumerate(seeds.values()):
            for color, (name, label) in zip(colors, ablation.runs.items()):
                records = runs.get(name, [])
                line(left, records, "eval/accuracy", label if number == 0 else None, color)
                line(right, records, ablation.signal_of(name), label if number == 0 else None, color)
        left.set(title="Held-out accuracy (greedy)", xlabel="RL step", ylabel="accuracy", ylim=(-0.02, 1.02))
        right.set(title=ablation.signal_label, xlabel="RL step")
        if ablation.signal_is_share:
            right.set(ylim=(-0.02, 1.02))
        save_figure(figure, f"{ablation.title} ({seeds_label(seeds)})", tmp)

    atomic_write(path, draw)
    return path
