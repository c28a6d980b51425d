"""The project's shape: packages import from this repository, and imports go one way.

DESIGN.md section 3. The units are the four top-level packages and the sub-packages of
`cluster`; each may import only the units listed for it in IMPORT_RULES (its own always).
The drivers, `cluster`'s top-level modules, are the only place where all the parts meet.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cluster", "actors", "learner", "rewards")
HEAVY = ("torch", "ray", "vllm", "deepspeed", "transformers")

# unit -> the other units it may import. A unit is a top-level package or a sub-package of
# cluster; "cluster" alone means the drivers (cluster/*.py), which may import everything.
IMPORT_RULES = {
    "rewards": set(),  # pure reward functions and the sandbox: nothing of the project
    "cluster.wire": set(),  # the types actors, learner and driver share: nothing of the project
    "cluster.recipe": set(),  # schema, loading, checks, placement: readable anywhere
    "actors": {"cluster.wire", "rewards"},  # never the learner, never the driver
    "learner": {"cluster.wire", "rewards"},  # never the actors, never the driver
    "cluster.inputs": {"cluster.recipe"},  # datasets, tasks, tiny model: from the recipe
    "cluster.output": set(),  # metrics, rollouts, plots: plain data in, files out
}
UNITS = sorted([*IMPORT_RULES, "cluster"], key=len, reverse=True)  # longest prefix first
# Must import without torch, ray, vllm, deepspeed or transformers.
LIGHT_MODULES = ["cluster.cli", "cluster.recipe", "cluster.recipe.schema", "cluster.recipe.load",
                 "cluster.recipe.checks", "cluster.recipe.placement", "cluster.recipe.pipeline",
                 "cluster.wire.samples", "cluster.wire.weights", "cluster.wire.teacher"]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_from_this_repository(package):
    # Run from "/" so the current directory cannot be what makes the import work.
    location = _run(f"import {package}; print({package}.__file__)").strip()
    assert Path(location).resolve() == REPO / package / "__init__.py"


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_import_nothing_heavy(module):
    code = (
        f"import sys, {module}\n"
        f"from cluster.recipe import load_recipe\n"
        f"load_recipe({str(REPO / 'deploy/recipes/arith-zero-cpu.toml')!r})\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    assert _run(code).strip() == "[]"


def _unit_of(module: str) -> str | None:
    """The unit a dotted module (or module.name) belongs to; None outside the project."""
    return next((u for u in UNITS if module == u or module.startswith(u + ".")), None)


def _imported_units(path: Path) -> set[str]:
    """Project units a source file imports, at any depth in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {_unit_of(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cluster import specs` imports cluster.specs: classify module.name.
            found |= {_unit_of(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add("relative import")  # the project uses absolute imports only
    return found - {None}


def _unit_files(unit: str) -> list[Path]:
    folder = REPO / unit.replace(".", "/")
    return sorted(folder.rglob("*.py"))


def test_every_source_file_belongs_to_a_unit():
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            assert _unit_of(module), module


@pytest.mark.parametrize("unit", sorted(IMPORT_RULES))
def test_imports_go_one_way(unit):
    files = _unit_files(unit)
    assert files, f"{unit} has no source files"
    allowed = IMPORT_RULES[unit] | {unit}
    offenders = {str(f.relative_to(REPO)): sorted(_imported_units(f) - allowed) for f in files}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_the_scanner_sees_what_a_violation_looks_like(tmp_path):
    # The scanner must see imports nested in functions, `from package import module`, and
    # relative imports, or the rule above proves nothing.
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from learner.losses import kl\n    import actors.rollout_worker\n"
                      "from cluster import loop\nfrom cluster.wire.samples import Sample\nfrom . import y\n")
    assert _imported_units(source) == {"learner", "actors", "cluster", "cluster.wire", "relative import"}
    assert _unit_of("cluster.loop") == "cluster" and _unit_of("cluster.recipe.schema") == "cluster.recipe"
    assert _unit_of("clusters.x") is None
