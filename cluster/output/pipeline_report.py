"""What `aha pipeline` leaves beside its stages, from plain data (no model, no Ray):

    <output root>/
      pipeline.json            the stages as run: kind, model source, directory, and after the
                               held-out evaluation each stage's metrics (keys as in eval.json)
      pipeline.md              the table: held-out accuracy and response length after each
                               stage, base model first (also printed at the end)
      pipeline.png             the same two curves against the stages
      <stage>/.aha-stage-done.json   written when the stage's driver returned: what it
                               made and the stage's definition, which a rerun compares

Every file is written to a temporary name and renamed into place. matplotlib is imported
where the figure is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from cluster.output.eval_report import metric_columns
from cluster.output.run_log import atomic_write

STAGE_DONE_FILE = ".aha-stage-done.json"
PIPELINE_FILE = "pipeline.json"
# What the pipeline itself writes into its output root: the only names a new start replaces.
PIPELINE_OUTPUTS = (PIPELINE_FILE, "pipeline.md", "pipeline.png")
ACCURACY, LENGTH = "eval/accuracy", "eval/response_length_mean"


def write_stage_done(stage_dir: Path, record: Mapping) -> None:
    """Mark the stage in `stage_dir` finished; `record` says what it made and how it was defined."""
    text = json.dumps(dict(record), indent=2) + "\n"
    atomic_write(stage_dir / STAGE_DONE_FILE, lambda tmp: Path(tmp).write_text(text))


def read_stage_done(stage_dir: Path) -> dict | None:
    """The finished stage's record, or None when the stage has not finished (or its record is
    unreadable: then it is run again, never trusted)."""
    try:
        record = json.loads((stage_dir / STAGE_DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def clear_stage_done(stage_dir: Path) -> None:
    """Before a stage (re)starts: until its driver returns again, it is not finished."""
    (stage_dir / STAGE_DONE_FILE).unlink(missing_ok=True)


def write_pipeline_file(root: Path, document: Mapping) -> None:
    text = json.dumps(dict(document), indent=2) + "\n"
    atomic_write(root / PIPELINE_FILE, lambda tmp: Path(tmp).write_text(text))


def write_summary(root: Path, rows: Sequence[Mapping], num_prompts=None) -> str:
    """Write pipeline.md and pipeline.png for `rows` ({"stage", "kind", "model", "metrics"} in
    order, the base model first); returns the table."""
    text = summary_table(rows)
    atomic_write(root / "pipeline.md", lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(root / "pipeline.png", lambda tmp: plot_summary(tmp, rows, num_prompts))
    return text


def summary_table(rows: Sequence[Mapping]) -> str:
    """Markdown, one row per model: accuracy, its change from the model the stage started from
    (a row's "from": a stage name or "base"; without one, the row before), and mean response
    length first, then any other held-out metric the models have."""
    others = [(k, t) for k, t in metric_columns(rows) if k not in (ACCURACY, LENGTH)]
    titles = ["stage", "kind", "accuracy", "change", "from", "mean length", *(t for _, t in others), "model"]
    lines = ["| " + " | ".join(titles) + " |", "|---|---|---:|---:|---|" + "---:|" * (1 + len(others)) + "---|"]
    accuracy_of, previous = {}, None
    for row in rows:
        metrics = row["metrics"]
        accuracy, length = metrics.get(ACCURACY), metrics.get(LENGTH)
        start = row.get("from", previous)
        before = accuracy_of.get(start)
        change = "-" if accuracy is None or before is None else f"{100 * (accuracy - before):+.1f}"
        cells = [_percent(accuracy), change, start if before is not None else "-",
                 "-" if length is None else f"{length:.1f}"]
        cells += [_percent(metrics.get(key)) for key, _ in others]
        lines.append(f"| {row['stage']} | {row['kind']} | " + " | ".join(cells) + f" | {row['model']} |")
        accuracy_of[row["stage"]] = accuracy
        previous = row["stage"]
    return "\n".join(lines)


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def plot_summary(path, rows: Sequence[Mapping], num_prompts=None) -> None:
    """Held-out greedy accuracy (left) and mean response length (right) of each stage's model, a
    bar each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(8.0, 1.6 * len(rows) + 4), 4), dpi=100)
    FigureCanvasAgg(figure)
    labels = [f"{row['stage']}\n({row['kind']})" for row in rows]
    problems = f", {num_prompts} problems" if num_prompts else ""
    panels = ((ACCURACY, "Held-out accuracy" + problems, "accuracy", "tab:green", "{:.0%}"),
              (LENGTH, "Mean response length", "tokens", "tab:blue", "{:.1f}"))
    for i, (key, title, ylabel, color, fmt) in enumerate(panels, 1):
        axes = figure.add_subplot(1, 2, i)
        points = [(x, row["metrics"][key]) for x, row in enumerate(rows) if row["metrics"].get(key) is not None]
        if points:  # bars, not a line: stages may branch from one model (distillation's three students)
            xs, ys = zip(*points)
            axes.bar(xs, ys, color=color, alpha=0.8)
            for x, y in points:
                axes.annotate(fmt.format(y), (x, y), textcoords="offset points", xytext=(0, 3), ha="center",
                              fontsize="small")
        axes.set_xticks(range(len(rows)), labels, fontsize="small")
        axes.set(title=title, ylabel=ylabel)
        if key == ACCURACY:
            axes.set_ylim(-0.02, 1.08)
        else:
            axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
