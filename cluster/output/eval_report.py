"""What `aha eval` leaves in its output directory, from plain results (no model, no Ray):

    eval.json            settings, and per model (in the order given) its metrics, keys as in
                         metrics.jsonl ("eval/accuracy", "eval/pass@4", ...)
    completions.parquet  one row per completion: model, prompt index, prompt, kind (greedy,
                         sampled, budget), sample index, max new tokens, completion, correct,
                         extracted answer, reward, num tokens, finish reason
    eval.md              the comparison table, one row per model (also printed)
    eval.png             the same numbers side by side: a bar per model for each metric

Every file is written to a temporary name and renamed into place, so each is whole whenever
it exists. matplotlib is imported where the figure is drawn.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.output.run_dir import EVAL_FILE
from cluster.output.run_log import HELDOUT_DIR, atomic_write

COMPLETION_COLUMNS = {
    "model": pa.string(), "prompt_index": pa.int64(), "prompt": pa.string(), "kind": pa.string(),
    "sample_index": pa.int64(), "max_new_tokens": pa.int64(), "completion": pa.string(), "correct": pa.bool_(),
    "answer": pa.string(), "reward": pa.float64(), "num_tokens": pa.int64(), "finish_reason": pa.string(),
}
# Table columns in order: (metric key or key prefix, column title); prefixes expand per k or budget.
_COLUMNS = (("eval/accuracy", "accuracy"), ("eval/pass@", "pass@"), ("eval/maj@", "maj@"),
            ("eval/acc@budget=", "acc@budget="), ("eval/response_length_mean", "mean length"),
            ("eval/reflection_rate", "reflection rate"))


def write_eval_outputs(out: Path, settings: Mapping, results: Sequence[Mapping], records: Sequence[Mapping]) -> None:
    """Write every output for `results` ({"model", "path", "metrics"} per model) and their
    completion `records` (each with its "model")."""
    document = {"settings": dict(settings), "models": [dict(r) for r in results]}
    atomic_write(out / EVAL_FILE, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2) + "\n"))
    table = completions_table(records)
    atomic_write(out / "completions.parquet", lambda tmp: pq.write_table(table, tmp))
    text = eval_table(results)
    atomic_write(out / "eval.md", lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(out / "eval.png", lambda tmp: plot_eval(tmp, results, settings.get("num_prompts")))


def write_step_records(run_dir: Path, step: int, records: Sequence[Mapping]) -> Path:
    """A training run's evaluation after `step`: its completion records (as `evaluate` returns
    them) in heldout/step-{step:06d}.parquet, in completions.parquet's columns (model: "step N").
    What `aha pipeline` reads back instead of evaluating a stage's model a second time."""
    path = Path(run_dir) / HELDOUT_DIR / f"step-{int(step):06d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = completions_table([{"model": f"step {step}", **record} for record in records])
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def read_step_records(run_dir: Path, step: int, model: str) -> list[dict] | None:
    """The records `write_step_records` wrote for `step`, relabelled as `model`'s; None when
    that evaluation left no file (an older run, or a step without one)."""
    path = Path(run_dir) / HELDOUT_DIR / f"step-{int(step):06d}.parquet"
    if not path.is_file():
        return None
    return [{**row, "model": model} for row in pq.read_table(path).to_pylist()]


def completions_table(records: Sequence[Mapping]) -> pa.Table:
    """The records as Arrow, with fixed column types (an answer column of all nulls stays a
    string column)."""
    return pa.table({name: pa.array([r[name] for r in records], type=kind)
                     for name, kind in COMPLETION_COLUMNS.items()})


def metric_columns(results: Sequence[Mapping]) -> list[tuple[str, str]]:
    """(metric key, column title) of every metric some model has, in table order."""
    keys = {key for r in results for key in r["metrics"]}
    columns = []
    for key, title in _COLUMNS:
        if key.endswith(("@", "=")):
            found = sorted((k for k in keys if k.startswith(key)), key=lambda k: int(k[len(key):]))
            columns += [(k, title + k[len(key):]) for k in found]
        elif key in keys:
            columns.append((key, title))
    return columns


def eval_table(results: Sequence[Mapping]) -> str:
    """A Markdown table, one row per model: accuracies as percentages, length in tokens."""
    columns = metric_columns(results)
    lines = ["| model | " + " | ".join(title for _, title in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for result in results:
        cells = [_cell(key, result["metrics"].get(key)) for key, _ in columns]
        lines.append(f"| {result['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "eval/response_length_mean":
        return f"{value:.1f}"
    return f"{100 * value:.1f}%"


def plot_eval(path, results: Sequence[Mapping], num_prompts=None) -> None:
    """Grouped bars: for each rate metric (accuracy, pass@k, maj@k, accuracy by budget,
    reflection rate) one bar per model, so models compare side by side on the same problems;
    each model's mean response length is in its legend entry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = [(key, title) for key, title in metric_columns(results) if key != "eval/response_length_mean"]
    figure = Figure(figsize=(max(6.0, 1.2 * len(columns) * max(1, len(results)) ** 0.5 + 2), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(results))
    for i, result in enumerate(results):
        values = [result["metrics"].get(key) or 0.0 for key, _ in columns]
        positions = [c + (i - (len(results) - 1) / 2) * width for c in range(len(columns))]
        length = result["metrics"].get("eval/response_length_mean")  # a count, not a share: in the legend
        label = str(result["model"]) + (f" (mean length {length:.1f} tokens)" if length is not None else "")
        bars = axes.bar(positions, values, width, label=label)
        axes.bar_label(bars, labels=[f"{v:.0%}" for v in values], fontsize="x-small", padding=1)
    axes.set_xticks(range(len(columns)), [title for _, title in columns])
    problems = f", {num_prompts} problems" if num_prompts else ""
    axes.set(title=f"Held-out evaluation{problems}", ylabel="share of problems", ylim=(0, 1.1))
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")
