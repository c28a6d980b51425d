"""The reference of every recipe key, from the schema: `explain` for one key or table (what
`aha check --explain KEY` prints) and `markdown` for all of them (docs/recipe-reference.md).

    .venv/bin/python -m cluster.recipe.reference > docs/recipe-reference.md
"""

from __future__ import annotations

import sys
import textwrap

from cluster.recipe.checks import RecipeError
from cluster.recipe.keys import Key, find, keys_of, table_doc, tables, type_text, value_text

REGENERATE = ".venv/bin/python -m cluster.recipe.reference > docs/recipe-reference.md"
WIDTH = 100  # terminal columns of `aha check --explain`


def _on_resume(key: Key) -> str:
    return "may change" if key.resumable else "fixed"


def explain(dotted: str) -> str:
    """A key's type, default, whether `--resume` may change it, and its help; for a table, its
    help and then each of its keys. RecipeError (one line) for an unknown key."""
    key = find(dotted)
    if key.table is None:
        return _explain_key(key)
    keys = keys_of(key.table, f"{key.dotted}.")
    head = [f"[{key.dotted}]: a table of {len(keys)} keys", *_wrap(_table_help(key), "  ")]
    return "\n".join(head) + "\n\n" + "\n\n".join(_explain_key(k) for k in keys)


def _table_help(key: Key) -> str:
    """A table's class docstring, after what its key in the parent table says, when that differs."""
    doc = table_doc(key.table)
    return doc if key.help == doc else f"{key.help}\n\n{doc}"


def print_explanation(dotted: str, extra: list[str]) -> int:
    """`aha check --explain KEY`: print `explain(KEY)`; 0. Takes no overrides (RecipeError)."""
    if extra:
        raise RecipeError("", f"--explain takes one key and nothing else, got {' '.join(extra)}")
    print(explain(dotted))
    return 0


def _explain_key(key: Key) -> str:
    lines = [f"{key.dotted}: {type_text(key.annotation)} = {value_text(key.default)}  "
             f"(on --resume: {_on_resume(key)})", *_wrap(key.help, "  ")]
    if key.table is not None:
        lines.append(f"  (a table: aha check --explain {key.dotted} lists its keys)")
    return "\n".join(lines)


def _wrap(text: str, indent: str) -> list[str]:
    """`text` filled to WIDTH columns under `indent`, its paragraphs kept apart by a blank line."""
    lines = []
    for block in text.split("\n\n"):
        lines += ([""] if lines else []) + textwrap.wrap(block, WIDTH, initial_indent=indent, subsequent_indent=indent)
    return lines


def markdown() -> str:
    """docs/recipe-reference.md: every key, table by table, with type, default, resume and help."""
    parts = [
        "# Recipe reference",
        "",
        "Every key of an aha recipe, table by table: its type, its default, whether a run continued with "
        "`--resume` may change it, and what it means. Any key can be overridden on the command line by its "
        "dotted path (`--rollout.group_size 4`); `aha check --explain KEY` prints one key or table.",
        "",
        f"Generated from the schema (`cluster/recipe/schema/`) by `{REGENERATE}`; do not edit by hand.",
    ]
    for name, cls in tables():
        parts += ["", f"## [{name}]", "", *_escape(table_doc(cls)).split("\n"), "",
                  "| key | type | default | on `--resume` | meaning |", "| --- | --- | --- | --- | --- |"]
        for key in keys_of(cls, f"{name}."):
            meaning = key.help + (f" Its keys: [{key.dotted}] below." if key.table is not None else "")
            default = "absent" if key.default is None else f"`{value_text(key.default)}`"
            parts.append(f"| `{key.dotted}` | {_escape(type_text(key.annotation))} | {default} | "
                         f"{_on_resume(key)} | {_escape(meaning)} |")
    return "\n".join(parts) + "\n"


def _escape(text: str) -> str:
    """Plain help text safe in a Markdown table cell (tags, emphasis and pipes shown as written)."""
    for char, escaped in (("\\", "\\\\"), ("|", "\\|"), ("*", "\\*"), ("<", "&lt;")):
        text = text.replace(char, escaped)
    return text


def main() -> int:
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
