"""Every recipe key as data: its dotted path, type, default, help and whether `--resume` may change
it, read from the schema's field metadata (`cluster/recipe/schema/setting.py`).

What `aha check --explain`, docs/recipe-reference.md and the resume check all read, so none of
them keeps a list of its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Literal

from cluster.recipe.checks import RecipeError, key_text
from cluster.recipe.schema import Recipe


@dataclass(frozen=True)
class Key:
    """One key of the recipe: a value, or a table such as `model.tiny` (then `table` is its class)."""

    dotted: str
    annotation: object  # the resolved type hint
    default: object
    help: str
    resumable: bool
    table: type | None = None


def table_class(annotation) -> type | None:
    """The dataclass a hint names (`X` or `X | None`), or None for a plain value."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    return next((option for option in options if dataclasses.is_dataclass(option)), None)


def keys_of(cls: type, prefix: str = "") -> list[Key]:
    """The keys of one table, in schema order (a sub-table is one key here)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        help_text = field.metadata.get("help") or table_doc(table_class(hints[field.name]))
        keys.append(Key(f"{prefix}{field.name}", hints[field.name], default, help_text,
                        bool(field.metadata.get("resumable")), table_class(hints[field.name])))
    return keys


def tables() -> list[tuple[str, type]]:
    """Every table's dotted name and class, each followed by its sub-tables: model, model.tiny, ..."""
    found = []

    def visit(name: str, cls: type) -> None:
        found.append((name, cls))
        for key in keys_of(cls, f"{name}."):
            if key.table is not None:
                visit(key.dotted, key.table)

    for key in keys_of(Recipe):
        visit(key.dotted, key.table)
    return found


def all_keys() -> list[Key]:
    """Every key of every table, sub-tables included, table by table."""
    return [key for name, cls in tables() for key in keys_of(cls, f"{name}.")]


def find(dotted: str) -> Key:
    """The key or table at `dotted` (`algorithm.clip_high`, `rollout`, `model.tiny`); RecipeError
    naming the first unknown part and what is known there."""
    cls, key = Recipe, None
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if cls is None:
            raise RecipeError(".".join(parts[: depth + 1]), f"{key.dotted} is a value, not a table")
        known = {k.dotted.rsplit(".", 1)[-1]: k for k in keys_of(cls, ".".join(parts[:depth]) + "." if depth else "")}
        if part not in known:
            raise RecipeError(".".join(key_text(p) for p in parts[: depth + 1]),
                              f"unknown key (known: {', '.join(sorted(known))})")
        key = known[part]
        cls = key.table
    return key


def resumable_keys() -> tuple[str, ...]:
    """The dotted keys a resumed run may change, in schema order."""
    return tuple(key.dotted for key in all_keys() if key.resumable)


def type_text(annotation) -> str:
    """A type as a recipe writer reads it: int, "auto" | "cpu", list of str, table of str to float."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(f'"{arg}"' for arg in args)
    if origin is tuple:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return f"table of {type_text(args[0])} to {type_text(args[1])}"
    if table_class(annotation) is not None:
        return "table" + (" (optional)" if origin in (typing.Union, types.UnionType) else "")
    return getattr(annotation, "__name__", str(annotation))


def value_text(value) -> str:
    """A default as it would be written in TOML (None: the table is absent)."""
    if value is None:
        return "(absent)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {value_text(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value):
        return "(its keys' defaults)"
    return repr(value)


def table_doc(cls: type | None) -> str:
    """A table's help: its class docstring, as one paragraph per blank-line-separated block."""
    if cls is None or not cls.__doc__:
        return ""
    return "\n\n".join(" ".join(block.split()) for block in cls.__doc__.strip().split("\n\n"))
