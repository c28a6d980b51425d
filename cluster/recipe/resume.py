"""What may change when a run is resumed: how long it runs and how it is watched and placed,
never what it learns from or how.

A resumed run continues the saved one exactly (data order, weights, optimizer, weight version),
so a changed group size, seed, data file or learning rate would silently mix two experiments.
Each setting says whether it may change (`resumable` in the schema, see `aha check --explain
KEY`); `resume_conflicts` compares the recipe of the resumed command with the run's
`recipe.json`, and `conflicts_text` says what differs.
"""

from __future__ import annotations

import dataclasses
import typing

from cluster.recipe.keys import resumable_keys, table_class
from cluster.recipe.schema import Recipe

# Dotted keys that may differ on --resume, derived from the schema.
RESUMABLE = resumable_keys()
# The most changed keys a refusal names, and the longest value it shows: it stays one line.
SHOWN_CONFLICTS = 6
SHOWN_VALUE_CHARS = 40


def _flatten(table: dict, schema=Recipe, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value, descending into the schema's tables (not into dict-valued settings
    such as reward.weights, which compare whole)."""
    hints = typing.get_type_hints(schema)
    flat = {}
    for field in dataclasses.fields(schema):
        value = table.get(field.name) if isinstance(table, dict) else None
        nested = table_class(hints[field.name])
        if nested is not None and isinstance(value, dict):
            flat.update(_flatten(value, nested, f"{prefix}{field.name}."))
        else:
            flat[f"{prefix}{field.name}"] = value
    return flat


def resumable(key: str) -> bool:
    return key in RESUMABLE


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two recipes (as `recipe_to_dict` gives them) and
    may not change on resume; sorted."""
    old, new = _flatten(saved), _flatten(current)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key) and not resumable(key))


def conflicts_text(saved: dict, current: dict, conflicts: list[str]) -> str:
    """One line for a refused resume: each changed key with its saved and its new value, and
    what to do. `conflicts` is what `resume_conflicts(saved, current)` returned."""
    old, new = _flatten(saved), _flatten(current)
    shown = [f"{key} ({_short(old.get(key))} -> {_short(new.get(key))})" for key in conflicts[:SHOWN_CONFLICTS]]
    more = f" and {len(conflicts) - SHOWN_CONFLICTS} more" if len(conflicts) > SHOWN_CONFLICTS else ""
    verb = "it" if len(conflicts) == 1 else "them"
    return (f"{', '.join(shown)}{more} may not change on resume: a resumed run keeps what it learns from and how "
            f"(set {verb} back, or start a new run; `aha check --explain KEY` says whether a setting may change)")


def _short(value) -> str:
    text = "(absent)" if value is None else repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 3] + "..."
