"""Writing small recipes and running `aha check` on them: shared by the recipe tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cluster.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "recipes" / "arith-zero-cpu.toml"

# A minimal valid recipe as top-level dotted keys, so a case can add any key (dotted, before
# it) or [sub.table] (after it) without redefining a table. num_cpus is fixed so the CPU budget
# check does not depend on this machine.
BASE = 'model.path = "models/tiny"\ndata.train_path = "data/train.parquet"\ncluster.num_cpus = 8\n'


def write_recipe(directory: Path, extra: str = "", name: str = "recipe.toml") -> Path:
    path = directory / name
    path.write_text(extra + "\n" + BASE, encoding="utf-8")
    return path


def recipe_error(path, overrides=()) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    assert "\n" not in str(info.value), "a recipe error must be one line"
    return info.value


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", "check", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aha: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]
