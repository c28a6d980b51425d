"""How a recipe key is declared: its default, its help, and whether a resumed run may change it.

`setting` is a dataclass field whose metadata carries the help (what `aha check --explain` and
docs/recipe-reference.md print) and `resumable` (what `cluster/recipe/resume.py` reads), so a
key's meaning is written once, beside its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING


def setting(default=MISSING, help: str = "", *, factory=MISSING, resumable: bool = False):  # noqa: A002
    """A recipe key with `default` (or `factory` for a mutable one) and its `help`. `resumable`:
    a run continued with `--resume` may change it (how long and where it runs, how it is
    watched), never what it learns from or how."""
    if not help.strip():
        raise TypeError("every recipe setting needs its help text")
    metadata = {"help": " ".join(help.split()), "resumable": resumable}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
