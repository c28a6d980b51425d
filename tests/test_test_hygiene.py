"""The tests' own shape: a test file imports no other test file, and nothing private from any
module in tests/. What several files share lives in a tests/*_helpers.py module (or, for the
tiny recipe, in cluster/inputs/tiny_recipe.py, which bench/ scripts use too); importing a test
file runs its module-level code and couples two files' fixtures and private helpers."""

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
LOCAL = {path.stem for path in TESTS.glob("*.py")}  # modules a test can import from tests/
TEST_FILES = sorted(TESTS.glob("test_*.py"))


def bad_imports(source: str) -> list[str]:
    """Each import in `source` of a test module, or of a private name from a module in tests/."""
    found = []
    for node in ast.walk(ast.parse(source)):  # imports inside functions count too
        if isinstance(node, ast.Import):
            found += [f"import {alias.name} (line {node.lineno})" for alias in node.names if alias.name.startswith("test_")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in LOCAL:
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            if node.module.startswith("test_") or private:
                names = ", ".join(alias.name for alias in node.names)
                found.append(f"from {node.module} import {names} (line {node.lineno})")
    return found


@pytest.mark.parametrize("path", TEST_FILES, ids=[path.name for path in TEST_FILES])
def test_no_test_file_imports_another_or_a_private_helper(path):
    assert bad_imports(path.read_text(encoding="utf-8")) == [], (
        f"{path.name}: move what is shared into a tests/*_helpers.py module, under a public name")


def test_the_check_finds_each_kind_of_bad_import():
    assert bad_imports("from test_stack_loop import AHA\nimport test_recipes\n") == [
        "from test_stack_loop import AHA (line 1)", "import test_recipes (line 2)"]
    assert bad_imports("def f():\n    from spec_helpers import _private, tiny_spec\n") == [
        "from spec_helpers import _private, tiny_spec (line 2)"]
    assert bad_imports("from spec_helpers import tiny_spec\nfrom cluster.run.chaos import _x\n") == []
