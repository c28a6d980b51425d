"""The project's shape: packages import from this repository, imports go one way, and no
import circle exists anywhere.

The units are the four top-level packages and the sub-packages of `cluster`; each may import
only the units listed for it in IMPORT_RULES (its own always). docs/architecture.md draws the
same rules. `cluster` alone is the CLI (cluster/cli.py): it parses and dispatches to commands.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("cluster", "actors", "learner", "rewards")
HEAVY = ("torch", "ray", "vllm", "deepspeed", "transformers")

# unit -> the other units it may import.
IMPORT_RULES = {
    "rewards": set(),  # pure reward functions and the sandbox: nothing of the project
    "cluster.wire": set(),  # the types actors, learner and driver share: nothing of the project
    "cluster.recipe": set(),  # schema, loading, checks, placement: readable anywhere
    "actors": {"cluster.wire", "rewards"},  # never the learner, never the driver
    "learner": {"cluster.wire", "rewards"},  # never the actors, never the driver
    "cluster.inputs": {"cluster.recipe"},  # datasets, tasks, tiny model: from the recipe
    "cluster.output": {"cluster.wire"},  # metrics, rollouts, plots: plain data in, files out (disk errors named)
    # Ray, the placement applied, the actors' specs (their types live with the actors and the
    # learner), the checks before anything starts.
    "cluster.startup": {"cluster.recipe", "cluster.wire", "cluster.inputs", "rewards", "actors", "learner"},
    # The driver's handle on each Ray role: launches actors/ and learner/, never a command.
    "cluster.roles": {"cluster.recipe", "cluster.wire", "cluster.inputs", "cluster.output", "cluster.startup",
                      "rewards", "actors", "learner"},
    # The run around the step: scaffold, resume, stop, fault injection; drives roles, never a command.
    "cluster.run": {"cluster.recipe", "cluster.wire", "cluster.inputs", "cluster.output", "cluster.startup",
                    "cluster.roles", "learner"},
    # One module per `aha` command: where all the parts meet.
    "cluster.commands": {"cluster.recipe", "cluster.wire", "cluster.inputs", "cluster.output", "cluster.startup",
                         "cluster.roles", "cluster.run", "rewards", "actors", "learner"},
    # The CLI parses and dispatches: commands, the recipe, and the errors it turns into exit codes.
    "cluster": {"cluster.commands", "cluster.recipe", "cluster.wire", "cluster.run", "cluster.startup",
                "cluster.inputs", "cluster.output"},
}
UNITS = sorted(IMPORT_RULES, key=len, reverse=True)  # longest prefix first
# Must import without torch, ray, vllm, deepspeed or transformers.
LIGHT_MODULES = ["cluster.cli", "cluster.recipe", "cluster.recipe.schema", "cluster.recipe.load",
                 "cluster.recipe.checks", "cluster.recipe.placement", "cluster.recipe.pipeline",
                 "cluster.recipe.tables", "cluster.recipe.cluster_spec",
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
            # `from cluster.startup import specs` imports cluster.startup.specs: classify module.name.
            found |= {_unit_of(f"{node.module}.{alias.name}") for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.add("relative import")  # the project uses absolute imports only
    return found - {None}


def _unit_files(unit: str) -> list[Path]:
    folder = REPO / unit.replace(".", "/")
    if unit == "cluster":  # the CLI: cluster's own top-level modules, not its sub-packages
        return sorted(folder.glob("*.py"))
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
                      "from cluster.commands import train\nfrom cluster import cli\nfrom cluster.wire.samples import Sample\n"
                      "from . import y\n")
    assert _imported_units(source) == {"learner", "actors", "cluster.commands", "cluster", "cluster.wire",
                                       "relative import"}
    assert _unit_of("cluster.cli") == "cluster" and _unit_of("cluster.commands.train") == "cluster.commands"
    assert _unit_of("cluster.recipe.schema") == "cluster.recipe"
    assert _unit_of("clusters.x") is None


def _module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    return {_module_of(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def _imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a source file imports, at any depth (a function's own imports too:
    a circle closed inside a function is still a circle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from package import name`: the submodule when `name` is one, else the package.
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return found & set(modules)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (and self-imports): every
    import circle. Tarjan's algorithm, iterative."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop(); on_stack.discard(member); component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.get(node, ()):
                        cycles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]; counter[0] += 1
                stack.append(child); on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle_anywhere():
    modules = _project_modules()
    graph = {name: _imported_modules(path, modules) - {name} for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_the_cycle_finder_sees_a_circle_closed_inside_a_function(tmp_path):
    # The circle issue 32 found: the train command imported the distill command at the top,
    # which imported the train command inside a function.
    (tmp_path / "train.py").write_text("from pkg.distill import teacher\n")
    (tmp_path / "distill.py").write_text("def distill():\n    from pkg.train import train\n")
    modules = {"pkg.train": tmp_path / "train.py", "pkg.distill": tmp_path / "distill.py"}
    graph = {name: _imported_modules(path, modules) for name, path in modules.items()}
    assert import_cycles(graph) == [["pkg.distill", "pkg.train"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert import_cycles({"a": {"a"}}) == [["a"]]


def test_the_cli_only_parses_and_dispatches():
    # Every `cmd_*` in the CLI hands its work to a command module in one call or a few lines.
    tree = ast.parse((REPO / "cluster" / "cli.py").read_text())
    long = {f.name: f.end_lineno - f.lineno + 1 for f in tree.body
            if isinstance(f, ast.FunctionDef) and f.name.startswith("cmd_") and f.end_lineno - f.lineno + 1 > 15}
    assert long == {}


def test_no_function_in_the_driver_layer_is_over_60_lines():
    # A function that does not fit on a screen hides its steps; the argument parser is a list.
    long = {}
    for path in (REPO / "cluster").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "build_parser":
                if node.end_lineno - node.lineno + 1 > 60:
                    long[f"{path.relative_to(REPO)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}
