"""Recipe tables merged and compared by the schema: a stage's recipe is the base with the
stage's overrides laid over it (a table-valued setting such as reward.weights is replaced whole,
not merged key by key), and two stage definitions differ only where a setting that makes a
different stage differs (`aha pipeline` reruns a finished stage only then).

Pure and light like the rest of cluster.recipe.
"""

from __future__ import annotations

import dataclasses
import typing

from cluster.recipe.resume import RESUMABLE
from cluster.recipe.schema import Recipe

# What may differ from a finished stage's record without making it a different stage: how it
# ran and was watched (resources, cadence), not what it made. Its length and its evaluation do.
NOT_A_CHANGE = tuple(key for key in RESUMABLE if key != "run.steps" and not key.startswith("eval."))


def with_overrides(base: dict, overrides: dict, schema=Recipe) -> dict:
    """`base` with `overrides` laid over it: schema sections merge, values replace."""
    merged = dict(base)
    hints = typing.get_type_hints(schema) if schema is not None else {}
    for key, value in overrides.items():
        nested = _section_type(hints.get(key))
        if nested is not None and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = with_overrides(merged[key], value, nested)
        else:
            merged[key] = value
    return merged


def _section_type(tp):
    """The dataclass a field's annotation holds (a section or a table like model.tiny), or None."""
    if tp is None:
        return None
    found = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def lookup(table: dict, dotted: str):
    node = table
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


TABLE = "<table>"  # in a flattened recipe: this table is present (an optional one may not be)


def flatten(table: dict, schema=Recipe, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of a recipe table, descending into the schema's tables only (each of
    which is also listed, as TABLE, so an optional table's presence counts)."""
    hints = typing.get_type_hints(schema)
    flat = {}
    for key, value in table.items():
        nested = _section_type(hints.get(key))
        if nested is not None and isinstance(value, dict):
            flat[f"{prefix}{key}"] = TABLE
            flat.update(flatten(value, nested, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def definition_changes(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for each difference between two stage definitions
    (`Stage.definition()`) that makes them different stages; sorted by key. A key one side
    lacks has its schema default there: a setting added to aha since a stage finished, at its
    default, does not change the stage."""
    old = {k: v for k, v in saved.items() if k != "recipe"} | flatten(saved.get("recipe", {}))
    new = {k: v for k, v in current.items() if k != "recipe"} | flatten(current.get("recipe", {}))
    changed = []
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, _default(key)), new.get(key, _default(key))
        if before != after and not _not_a_change(key):
            changed.append((key, before, after))
    return changed


def _default(dotted: str):
    """The schema's default of a flattened recipe key, as recipe_to_dict writes it (None for a
    key the schema does not have)."""
    schema, value = Recipe, None
    for part in dotted.split("."):
        fields = {f.name: f for f in dataclasses.fields(schema)} if schema is not None else {}
        if part not in fields:
            return None
        field = fields[part]
        value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        schema = _section_type(typing.get_type_hints(schema)[part])
    if dataclasses.is_dataclass(value):
        return TABLE
    return list(value) if isinstance(value, tuple) else value


def _not_a_change(key: str) -> bool:
    return key in NOT_A_CHANGE
