"""The run's plots, drawn from its metrics.jsonl into output_dir/plots/, and the held-out
before/after summary the loop prints at the end.

matplotlib is imported where a figure is drawn, so importing this module stays light.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cluster.output.run_log import REWARD_COMPONENT_PREFIX, atomic_write, read_metrics
from cluster.wire.disk_errors import DiskWriteFailed, naming_disk_errors

# figure file -> (title, y label, predicate choosing the metric keys drawn as lines)
_FIGURES = {
    "reward.png": ("Reward", "reward", lambda k: k == "reward_mean" or k.startswith(REWARD_COMPONENT_PREFIX)),
    "accuracy.png": ("Accuracy", "accuracy", lambda k: k in ("accuracy", "eval/accuracy")),
    "response_length.png": (
        "Response length", "tokens", lambda k: k in ("response_length_mean", "response_length_max")
    ),
    "loss.png": ("Loss (token NLL)", "nats per token", lambda k: k in ("learner/loss", "eval/loss")),
    "distill.png": ("Student vs teacher (aha distill)", "per sampled token",
                    lambda k: k in ("distill/reverse_kl", "distill/teacher_agreement")),
    "reflection_rate.png": ("Reflection words", "share of completions", lambda k: k == "reflection_rate"),
    # A task with a detector of checks (run.check_detector): checking, correcting and accuracy
    # on one figure, so the reader sees whether they rise together.
    "self_verification.png": (
        "Checks, self-corrections and accuracy", "share of completions",
        lambda k: k in ("verify_rate", "correction_rate", "eval/verify_rate", "eval/correction_rate", "eval/accuracy")),
    "accuracy_by_checking.png": (
        "Accuracy of completions that check vs those that don't", "accuracy",
        lambda k: k.removeprefix("eval/") in ("accuracy_verified", "accuracy_unverified")),
    "eval_scaling.png": (
        "Held-out pass@k / maj@k", "accuracy", lambda k: k.startswith(("eval/pass@", "eval/maj@"))
    ),
}
# Figures drawn only when a run logged this metric (the rest of their lines exist in every run).
_DRAWN_ONLY_WITH = {"self_verification.png": "verify_rate"}


def heldout_before_after(records: Sequence[Mapping]) -> tuple[float, float, int, int] | None:
    """(accuracy before RL, latest accuracy, problems, step of the latest) from the metrics,
    or None unless the held-out set was evaluated at step 0 and at a later step."""
    evals = [r for r in records if isinstance(r.get("eval/accuracy"), (int, float))]
    before = next((r for r in evals if r["step"] == 0), None)
    after = max((r for r in evals if r["step"] > 0), key=lambda r: r["step"], default=None)
    if before is None or after is None:
        return None
    return before["eval/accuracy"], after["eval/accuracy"], int(after.get("eval/num_prompts", 0)), after["step"]


def heldout_summary(records: Sequence[Mapping], stage: str = "RL") -> str | None:
    """'held-out accuracy (greedy, 256 problems): 9.4% before RL -> 95.7% after 40 steps (+86.3 points)';
    `stage` names the training ("RL", "SFT")."""
    found = heldout_before_after(records)
    if found is None:
        return None
    before, after, problems, step = found
    return (f"held-out accuracy (greedy, {problems} problems): {before:.1%} before {stage} -> {after:.1%} after "
            f"{step} steps ({100 * (after - before):+.1f} points)")


def plot_run(output_dir: str | os.PathLike) -> list[Path]:
    """Draw the run's curves from metrics.jsonl into output_dir/plots/, one PNG per figure.

    Figures: reward (mean and each "reward/<name>" component), accuracy (train "accuracy"
    and held-out "eval/accuracy"), response length (mean, max), reflection rate, and eval
    pass@k/maj@k — each against step. A figure none of whose metrics were logged is
    skipped. Uses matplotlib's Agg canvas directly (no pyplot, no display, no global
    backend switch) and renames each finished file into place, so it is safe to call again,
    or from a Ctrl-C handler. Returns the paths written.

    A run draws them as it ends, an error maybe on its way out: a disk that refuses them
    (full, no permission) is a warning line, and the figures are drawn again from
    metrics.jsonl on the next call.
    """
    try:
        return _plot_all(Path(output_dir))
    except DiskWriteFailed as err:
        print(f"aha: warning: plots not drawn: {err}", file=sys.stderr, flush=True)
        return []


def _plot_all(output_dir: Path) -> list[Path]:
    records = read_metrics(output_dir)
    plots = output_dir / "plots"
    with naming_disk_errors(plots):
        plots.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (title, ylabel, wanted) in _FIGURES.items():
        series = _series(records, wanted)
        needed = _DRAWN_ONLY_WITH.get(filename)
        if series and (needed is None or needed in series):
            path = plots / filename
            atomic_write(path, lambda tmp, s=series, t=title, y=ylabel: _draw(tmp, s, t, y))
            written.append(path)
    if heldout_before_after(records) is not None:
        path = plots / "heldout_accuracy.png"
        atomic_write(path, lambda tmp: _draw_heldout(tmp, records))
        written.append(path)
    return written


def _series(records: Sequence[Mapping], wanted) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values) for every numeric metric `wanted` selects, nulls skipped."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key == "step" or not wanted(key) or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                steps, values = series.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(float(value))
    return dict(sorted(series.items()))


def _draw(path: str, series: Mapping[str, tuple[list[int], list[float]]], title: str, ylabel: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, (steps, values) in series.items():
        # Markers show sparse series (eval every N steps) that a bare line would hide.
        axes.plot(steps, values, label=key, marker="o" if len(steps) < 50 else None, markersize=3)
    axes.set(title=title, xlabel="step", ylabel=ylabel)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def _draw_heldout(path: str, records: Sequence[Mapping]) -> None:
    """Held-out greedy accuracy against step, with the before-RL and final values written on."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    before, after, problems, last = heldout_before_after(records)
    steps, values = _series(records, lambda k: k == "eval/accuracy")["eval/accuracy"]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot(steps, values, marker="o", color="tab:green", label="held-out greedy accuracy")
    for step, value, label, side in ((0, before, "before RL", 1), (last, after, "after RL", -1)):
        axes.annotate(f"{label}: {value:.1%}", (step, value), textcoords="offset points",
                      xytext=(6 * side, -14 if value > 0.5 else 8), ha="left" if side > 0 else "right")
    axes.set(title=f"Held-out accuracy, {problems} problems ({100 * (after - before):+.1f} points from RL)",
             xlabel="step", ylabel="accuracy", ylim=(-0.02, 1.05))
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png")


def print_run_end(output_dir: str | os.PathLike, stage: str) -> None:
    """The last lines of a training run: held-out accuracy before and after `stage`, and where
    its model, metrics, plots and checkpoints are."""
    out = Path(output_dir)
    summary = heldout_summary(read_metrics(out), stage=stage)
    if summary:
        print(f"[aha] {summary}", flush=True)
    print(f"[aha] done: model {out / 'final'}, metrics {out / 'metrics.jsonl'}, plots {out / 'plots'}, "
          f"checkpoints {out / 'checkpoints'}", flush=True)
