"""Make a recipe's local inputs exist: the synthetic datasets, the tiny model, its pre-training.

All are deterministic in their settings, so a second run reuses what the first one wrote;
a sidecar file records the settings, and changed settings rebuild. The held-out set is
written first, without repeats, and the training set and the pre-training corpus exclude
its prompts: held-out accuracy is measured on problems the model never trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cluster.recipe.checks import RecipeError

TASK_OPTIONS = {
    "arithmetic": ("min_digits", "max_digits", "ops"),
    "chain_sum": ("min_terms", "max_terms", "max_term"),
    "countdown": ("num_numbers", "max_number", "max_target"),
}
EVAL_SEED_OFFSET = 1_000_003  # eval rows come from their own seed


def prepare_model(recipe, *, pretrain: bool = True) -> Path | str:
    """Build `model.path` when the recipe has `[model.tiny]`; else leave the path as given.

    With `[model.pretrain]` the random-initialised model goes to `<model.path>.init` and the
    pre-trained one to `model.path` (call `prepare_data` first: the corpus excludes the
    held-out prompts); `pretrain=False` returns the random-initialised one.
    """
    if recipe.model.tiny is None:
        return recipe.model.path
    from cluster.inputs.tiny_model import ensure_tiny_model, tiny_model_spec

    spec = tiny_model_spec(recipe.model.tiny, recipe.rollout.max_model_len)
    try:
        if recipe.model.pretrain is None:
            return ensure_tiny_model(recipe.model.path, spec)
        init_dir = ensure_tiny_model(f"{recipe.model.path}.init", spec)
        if not pretrain:
            return init_dir
        from cluster.inputs.pretrain import ensure_pretrained

        return ensure_pretrained(recipe, init_dir, held_out_prompts(recipe))
    except FileExistsError as err:
        raise RecipeError("model.path", str(err)) from None


def held_out_prompts(recipe) -> frozenset[str]:
    """The prompts of the recipe's held-out file (empty without one)."""
    if not recipe.data.eval_path or not Path(recipe.data.eval_path).is_file():
        return frozenset()
    from cluster.inputs.prompts import load_rows

    rows = load_rows(recipe, recipe.data.eval_path)
    return frozenset(row.prompt for row in rows)


def prepare_data(recipe) -> list[Path]:
    """Write the synthetic eval (first) and train Parquet files when the recipe has `[data.synthetic]`."""
    synthetic = recipe.data.synthetic
    if synthetic is None:
        return []
    from cluster.inputs.tasks import task_rows, write_parquet

    options = {name: getattr(synthetic, name) for name in TASK_OPTIONS[synthetic.task]}
    written, held_out = [], frozenset()
    splits = [(recipe.data.eval_path, synthetic.eval_rows, synthetic.seed + EVAL_SEED_OFFSET, True)] \
        if synthetic.eval_rows else []
    splits.append((recipe.data.train_path, synthetic.train_rows, synthetic.seed, False))
    for path, count, seed, is_eval in splits:
        settings = {"task": synthetic.task, "rows": count, "seed": seed, "held_out": is_eval, **options}
        if not is_eval:
            settings["excluded_prompts_sha256"] = hashlib.sha256("\n".join(sorted(held_out)).encode()).hexdigest()
        sidecar = Path(f"{path}.settings.json")
        if Path(path).is_file() and sidecar.is_file() and json.loads(sidecar.read_text()) == settings:
            rows = None
        else:
            rows = task_rows(synthetic.task, count, seed=seed, exclude=held_out, unique=is_eval, **options)
            write_parquet(rows, path)
            sidecar.write_text(json.dumps(settings, indent=2) + "\n")
        if is_eval:
            held_out = held_out_prompts(recipe) if rows is None else frozenset(r["prompt"] for r in rows)
        written.append(Path(path))
    return written
