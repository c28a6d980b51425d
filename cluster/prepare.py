"""Make a recipe's local inputs exist: the tiny model and the synthetic datasets it asks for.

Both are deterministic in their settings, so a second run reuses what the first one wrote;
a sidecar file records the settings, and changed settings rebuild.
"""

from __future__ import annotations

import json
from pathlib import Path

TASK_OPTIONS = {
    "arithmetic": ("min_digits", "max_digits", "ops"),
    "countdown": ("num_numbers", "max_number", "max_target"),
}


def prepare_model(recipe) -> Path | str:
    """Build `model.path` when the recipe has a `[model.tiny]` table; else leave the path as given."""
    if recipe.model.tiny is None:
        return recipe.model.path
    from cluster.tiny_model import TinyModelSpec, ensure_tiny_model

    tiny = recipe.model.tiny
    spec = TinyModelSpec(
        hidden_size=tiny.hidden_size,
        num_layers=tiny.num_layers,
        num_kv_heads=tiny.num_kv_heads,
        intermediate_size=tiny.intermediate_size,
        max_position_embeddings=max(2048, recipe.rollout.max_model_len),
        seed=tiny.seed,
    )
    return ensure_tiny_model(recipe.model.path, spec)


def prepare_data(recipe) -> list[Path]:
    """Write the synthetic train (and eval) Parquet files when the recipe has `[data.synthetic]`."""
    synthetic = recipe.data.synthetic
    if synthetic is None:
        return []
    from cluster.tasks import write_task

    options = {name: getattr(synthetic, name) for name in TASK_OPTIONS[synthetic.task]}
    # Eval rows come from a different seed so they are not copies of training prompts.
    splits = [(recipe.data.train_path, synthetic.train_rows, synthetic.seed)]
    if synthetic.eval_rows:
        splits.append((recipe.data.eval_path, synthetic.eval_rows, synthetic.seed + 1_000_003))
    written = []
    for path, rows, seed in splits:
        settings = {"task": synthetic.task, "rows": rows, "seed": seed, **options}
        sidecar = Path(f"{path}.settings.json")
        if not (Path(path).is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == settings):
            write_task(synthetic.task, path, rows, seed=seed, **options)
            sidecar.write_text(json.dumps(settings, indent=2) + "\n")
        written.append(Path(path))
    return written

