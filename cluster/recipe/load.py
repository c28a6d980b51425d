"""Loading recipes: TOML and `--section.key value` overrides -> the typed, frozen `Recipe`.

A recipe is untrusted input. Every problem with it — unknown key, wrong type, value out of
range, impossible combination — becomes a `RecipeError` whose message is one line naming
the dotted key; the CLI prints it and exits with code 2. Nothing heavy is imported.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Literal

from cluster.recipe.checks import RecipeError, check_recipe, key_text
from cluster.recipe.keys import find
from cluster.recipe.schema import Recipe

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp` and convert it; RecipeError if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise RecipeError(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(key, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a table, got {type(value).__name__}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    # bool is a subclass of int: reject true/false where a number is expected, and vice versa.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # inf as a timeout would wait forever; nan compares false
            raise RecipeError(key, f"must be a finite number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise RecipeError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, table: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in table:
        if name not in known:
            raise RecipeError(_join(prefix, name), f"unknown key (known: {', '.join(sorted(known))})")
    kwargs = {name: _coerce(value, hints[name], _join(prefix, name)) for name, value in table.items()}
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{key_text(name)}" if prefix else key_text(name)


def recipe_from_dict(table: dict) -> Recipe:
    """Build and validate a Recipe from a nested dict (the parsed TOML plus overrides)."""
    recipe = _build(Recipe, table, "")
    check_recipe(recipe, local_cpus=os.cpu_count() or 1)
    return recipe


# ---------------------------------------------------------------------------------------
# Overrides from the command line: --section.key value


def _parse_toml_value(raw: str):
    """One TOML value, or None when `raw` is not exactly one (trailing keys are refused too)."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    return parsed["v"] if len(parsed) == 1 else None


def _is_text(tp) -> bool:
    return tp is str or (typing.get_origin(tp) is Literal and isinstance(typing.get_args(tp)[0], str))


def parse_override_value(dotted: str, raw: str):
    """Parse a CLI value for `dotted`: strings stay verbatim, everything else is a TOML value.

    A list field also takes a comma-separated list (`--run.reflection_words wait,hmm`).
    """
    tp = find(dotted).annotation
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if _is_text(tp):
        return raw
    if typing.get_origin(tp) is tuple and not raw.lstrip().startswith("["):
        item_type = typing.get_args(tp)[0]
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        value = [part if _is_text(item_type) else _parse_toml_value(part) for part in parts]
        value = None if None in value else value
    else:
        value = _parse_toml_value(raw)
    if value is None:
        raise RecipeError(dotted, f"cannot parse {raw!r} as {_type_name(tp)}")
    return value


def apply_override(table: dict, dotted: str, value) -> None:
    """Set `dotted` (e.g. "rollout.group_size") in the nested dict `table`, in place."""
    *parents, leaf = dotted.split(".")
    node = table
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(".".join(parents[: i + 1]), "is a value, not a table")
        node = child
    node[leaf] = value


def parse_overrides(args: list[str]) -> list[tuple[str, object]]:
    """Turn `["--a.b", "1", "--c.d=x"]` into `[("a.b", 1), ("c.d", "x")]`, type-aware."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise RecipeError("", f"unexpected argument {arg!r}; overrides look like --section.key value")
        dotted, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise RecipeError(dotted, "override has no value")
            raw, i = args[i + 1], i + 1
        if "." not in dotted:
            raise RecipeError(dotted, "overrides name a key as --section.key")
        pairs.append((dotted, parse_override_value(dotted, raw)))
        i += 1
    return pairs


def read_recipe_table(path: str | os.PathLike) -> dict:
    """The parsed TOML of a recipe file; a missing, unreadable or invalid file is one RecipeError."""
    file = Path(path)
    if not file.is_file():
        raise RecipeError("", f"recipe file '{file}' does not exist")
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise RecipeError("", f"recipe file '{file}' cannot be read: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
        raise RecipeError("", f"recipe file '{file}' is not valid TOML: {reason}") from None


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = ()) -> Recipe:
    """Read a TOML recipe (or start from defaults when `path` is None) and apply overrides."""
    table: dict = read_recipe_table(path) if path is not None else {}
    for dotted, value in parse_overrides(list(overrides)):
        apply_override(table, dotted, value)
    return recipe_from_dict(table)


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as plain data (tuples as lists, None tables dropped), e.g. to save with a run."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(recipe))
