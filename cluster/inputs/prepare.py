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
    """Write the synthetic eval (first) and train files when the recipe has `[data.synthetic]`.

    A file at a data path is replaced only when aha wrote it (its sidecar records the file's
    hash): a dataset of the user's own at that path is a RecipeError, never overwritten.
    """
    synthetic = recipe.data.synthetic
    if synthetic is None:
        return []
    from cluster.inputs.tasks import task_options, task_rows, write_rows

    options = task_options(synthetic)
    written, held_out = [], frozenset()
    splits = [("data.eval_path", synthetic.eval_rows, synthetic.seed + EVAL_SEED_OFFSET, True)] \
        if synthetic.eval_rows else []
    splits.append(("data.train_path", synthetic.train_rows, synthetic.seed, False))
    for key, count, seed, is_eval in splits:
        path = Path(getattr(recipe.data, key.split(".")[1]))
        settings = {"task": synthetic.task, "rows": count, "seed": seed, "held_out": is_eval, **options}
        if not is_eval:
            settings["excluded_prompts_sha256"] = hashlib.sha256("\n".join(sorted(held_out)).encode()).hexdigest()
        if _synthetic_record(path, key).get("settings") == settings:
            rows = None  # the same settings wrote this very file: reuse it
        else:
            rows = task_rows(synthetic.task, count, seed=seed, exclude=held_out, unique=is_eval, **options)
            write_rows(rows, path, recipe.data.file_format)
            record = {"settings": settings, "sha256": file_sha256(path)}
            Path(f"{path}{SIDECAR_SUFFIX}").write_text(json.dumps(record, indent=2) + "\n")
        if is_eval:
            held_out = held_out_prompts(recipe) if rows is None else frozenset(r["prompt"] for r in rows)
        written.append(path)
    if synthetic.cold_start_traces:
        written.append(_write_cold_start(recipe, written[-1]))
    return written


def _write_cold_start(recipe, train_path: Path) -> Path:
    """Solutions of the first `cold_start_traces` training prompts, worked or the answer alone
    (cold_start_style), as SFT traces (held-out problems are never among them: the training file
    excludes them)."""
    from cluster.inputs.pretrain import direct_solution, parse_terms, worked_solution
    from cluster.inputs.prompts import load_rows
    from cluster.inputs.tasks import write_rows

    synthetic = recipe.data.synthetic
    path, key = Path(synthetic.cold_start_path), "data.synthetic.cold_start_path"
    settings = {"cold_start_traces": synthetic.cold_start_traces, "train_sha256": file_sha256(train_path)}
    if synthetic.cold_start_style != "worked":  # as before for worked ones: their files stay valid
        settings["style"] = synthetic.cold_start_style
    solve = worked_solution if synthetic.cold_start_style == "worked" else direct_solution
    if _synthetic_record(path, key).get("settings") != settings:
        rows = load_rows(recipe, str(train_path))[: synthetic.cold_start_traces]
        traces = [{"prompt": row.prompt, "completion": solve(parse_terms(row.prompt)), **row.fields} for row in rows]
        write_rows(traces, path)
        record = {"settings": settings, "sha256": file_sha256(path)}
        Path(f"{path}{SIDECAR_SUFFIX}").write_text(json.dumps(record, indent=2) + "\n")
    return path


SIDECAR_SUFFIX = ".settings.json"  # beside each generated file: its settings and hash


def _synthetic_record(path: Path, key: str) -> dict:
    """The sidecar of a file aha generated at `path` ({} when there is no file yet); RecipeError
    when a file is there that aha did not write, or that was changed since."""
    if not path.exists():
        return {}
    sidecar = Path(f"{path}{SIDECAR_SUFFIX}")
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and "task" in record and "sha256" not in record:
        return {}  # a sidecar of aha before hashes: its file is aha's, regenerate it
    if not isinstance(record, dict) or not path.is_file() or record.get("sha256") != file_sha256(path):
        raise RecipeError(key, f"'{path}' exists and was not written by aha's [data.synthetic] (or was changed "
                          "since); aha will not overwrite it: point the path elsewhere, or drop [data.synthetic] "
                          "to train on that file")
    return record


def file_sha256(path: str | Path) -> str:
    """The file's content hash, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
