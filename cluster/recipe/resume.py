"""What may change when a run is resumed: how long it runs and how it is watched and placed,
never what it learns from or how.

A resumed run continues the saved one exactly (data order, weights, optimizer, weight version),
so a changed group size, seed, data file or learning rate would silently mix two experiments.
`resume_conflicts` compares the recipe of the resumed command with the run's `recipe.json`.
"""

from __future__ import annotations

import dataclasses
import typing

from cluster.recipe.schema import Recipe

# Dotted keys (or whole sections, ending in ".") that may differ on --resume.
RESUMABLE = (
    "run.steps", "run.checkpoint_every", "run.keep_checkpoints", "run.log_every",
    "run.name", "run.output_dir",  # where the run lives: a moved run directory resumes where it is
    "eval.",  # evaluation cadence and settings: measurement, not training
    "cluster.address", "cluster.num_cpus", "cluster.rollout_cpus", "cluster.rollout_gpus",
    "cluster.learner_cpus", "cluster.learner_gpus", "cluster.scorer_cpus", "cluster.teacher_cpus",
    "cluster.teacher_gpus", "cluster.timeout_s", "cluster.max_restarts",
    "cluster.health_timeout_s", "cluster.learner_placement",
    "rollout.num_workers", "rollout.max_num_seqs", "rollout.gpu_memory_utilization", "rollout.kv_cache_gb",
    "rollout.enforce_eager", "rollout.sleep_between_steps",
    "reward.num_scorers", "reward.workers_per_scorer", "reward.timeout_s",
    "learner.cpu_threads", "distill.num_teachers", "distill.max_batch_tokens", "distill.cpu_threads",
)


def _flatten(table: dict, schema=Recipe, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value, descending into the schema's tables (not into dict-valued settings
    such as reward.weights, which compare whole)."""
    hints = typing.get_type_hints(schema)
    flat = {}
    for field in dataclasses.fields(schema):
        value = table.get(field.name) if isinstance(table, dict) else None
        nested = [a for a in (typing.get_args(hints[field.name]) or (hints[field.name],)) if dataclasses.is_dataclass(a)]
        if nested and isinstance(value, dict):
            flat.update(_flatten(value, nested[0], f"{prefix}{field.name}."))
        else:
            flat[f"{prefix}{field.name}"] = value
    return flat


def resumable(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE)


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two recipes (as `recipe_to_dict` gives them) and
    may not change on resume; sorted."""
    old, new = _flatten(saved), _flatten(current)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key) and not resumable(key))
