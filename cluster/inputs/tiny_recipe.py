"""The tiny recipe: a whole GRPO run small enough for a 2-core CPU, written as TOML.

Tests and `bench/` scripts start real runs from it, each changing only what it is about:

    write_tiny_recipe(tmp_path / "recipe.toml", {"run.steps": 6, "rollout.num_workers": 2})

The recipe builds its own tiny model at `{root}/model` and its own synthetic arithmetic data
under `{root}/data`, runs 3 steps on 2 learner ranks and writes the run to `{root}/run`, where
`root` is the folder it is written into unless given.

Overrides are dotted recipe keys. A value replaces the key's whole value (a table too, so
`"cluster": {"num_cpus": 4}` leaves no other cluster key), None removes the key or table, and
`{root}` in any string stands for the root. Values are plain TOML data: str, bool, int, float,
lists and dicts (a dict is a table, so pipeline stages can be given whole).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path

TINY_RECIPE: dict = {
    "model": {"path": "{root}/model", "tiny": {"hidden_size": 128, "num_layers": 2}},
    "data": {
        "train_path": "{root}/data/train.parquet",
        "eval_path": "{root}/data/eval.parquet",
        "template": "r1_zero",
        "max_prompt_tokens": 400,
        "synthetic": {"task": "arithmetic", "train_rows": 64, "eval_rows": 16},
    },
    "rollout": {"group_size": 4, "prompts_per_step": 4, "max_new_tokens": 12, "max_model_len": 512,
                "kv_cache_gb": 0.2, "enforce_eager": True},
    "reward": {"weights": {"arithmetic": 1.0, "format": 0.5}, "workers_per_scorer": 1},
    # A random tiny model earns no reward, so every advantage is 0; the entropy bonus still moves
    # the weights each step, which is what the weight-sync and staleness checks need.
    "algorithm": {"entropy_coef": 0.01},
    "learner": {"num_ranks": 2, "zero_stage": 2, "lr": 1e-4, "micro_batch_size": 4},
    "cluster": {"num_cpus": 4, "rollout_cpus": 1, "learner_cpus": 1, "scorer_cpus": 0.5, "timeout_s": 300},
    "eval": {"num_prompts": 8, "k": [2], "budgets": [4]},
    "run": {"output_dir": "{root}/run", "steps": 3, "checkpoint_every": 2},
}
# The overrides that turn it into a recipe for a command that trains nothing (eval, generate):
# it samples a given model on given prompts, so no tiny model, synthetic data, step sizes,
# algorithm, learner, held-out evaluation or run length.
SAMPLING_ONLY: dict = {
    "model.tiny": None, "data.synthetic": None, "rollout.group_size": None, "rollout.prompts_per_step": None,
    "algorithm": None, "learner": None, "eval": None, "run": None,
}


def tiny_recipe_table(root: str | Path, overrides: Mapping[str, object] | None = None) -> dict:
    """The tiny recipe as the table TOML would parse to, with `overrides` applied."""
    table = copy.deepcopy(TINY_RECIPE)
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = table
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(value)
    return _with_root(table, str(root))


def tiny_recipe(root: str | Path, overrides: Mapping[str, object] | None = None) -> str:
    """The tiny recipe's TOML text, with `overrides` applied."""
    return _toml(tiny_recipe_table(root, overrides))


def write_tiny_recipe(path: str | Path, overrides: Mapping[str, object] | None = None, *,
                      root: str | Path | None = None) -> Path:
    """Write the tiny recipe to `path` (its folder is the root unless `root` is given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tiny_recipe(path.parent if root is None else root, overrides))
    return path


def _with_root(value, root: str):
    # Plain replace, not str.format: templates such as "{prompt}=? <think>" keep their braces.
    if isinstance(value, str):
        return value.replace("{root}", root)
    if isinstance(value, dict):
        return {key: _with_root(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_root(item, root) for item in value]
    return value


def _toml(table: dict, prefix: str = "") -> str:
    """TOML text of `table`: its plain keys first, then one [section] per sub-table."""
    plain = {key: value for key, value in table.items() if not _is_table(key, value)}
    lines = [f"[{prefix}]"] if prefix and (plain or not table) else []
    lines += [f"{_key(key)} = {_value(value)}" for key, value in plain.items()]
    text = "".join(line + "\n" for line in lines)
    for key, value in table.items():
        if _is_table(key, value):
            text += _toml(value, f"{prefix}.{_key(key)}" if prefix else _key(key))
    return text


def _is_table(key: str, value) -> bool:
    # reward.weights maps reward names to numbers: written inline, as users write it.
    return isinstance(value, dict) and key != "weights"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's string escapes are TOML's basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"a tiny recipe value must be TOML data, not {type(value).__name__}")
