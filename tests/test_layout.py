"""The project's shape: packages import from this repository, and imports go one way."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cluster", "actors", "learner", "rewards")
HEAVY = ("torch", "ray", "vllm", "deepspeed", "transformers")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_from_this_repository(package):
    # Run from "/" so the current directory cannot be what makes the import work.
    location = _run(f"import {package}; print({package}.__file__)").strip()
    assert Path(location).resolve() == REPO / package / "__init__.py"


@pytest.mark.parametrize("module", ["cluster.config", "cluster.types", "cluster.recipe_checks", "cluster.cli"])
def test_light_modules_import_nothing_heavy(module):
    code = (
        f"import sys, {module}\n"
        f"from cluster.config import load_recipe\n"
        f"load_recipe({str(REPO / 'deploy/recipes/arith-zero-cpu.toml')!r})\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    assert _run(code).strip() == "[]"


def _project_imports(path: Path) -> set[str]:
    """Top-level project packages a source file imports, at any depth in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


# DESIGN.md section 3: rewards imports nothing of the project; actors and learner never import
# each other; only the driver (cluster) brings them together.
FORBIDDEN = {"rewards": {"cluster", "actors", "learner"}, "actors": {"learner"}, "learner": {"actors"}}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package):
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"{package} has no source files"
    offenders = {str(f.relative_to(REPO)): sorted(_project_imports(f) & FORBIDDEN[package]) for f in files}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_forbidden_import_is_detected(tmp_path):
    # The scanner itself must see imports nested in functions, or the rule above proves nothing.
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from learner.losses import kl\n    import actors.rollout_worker\n")
    assert _project_imports(source) == {"learner", "actors"}
