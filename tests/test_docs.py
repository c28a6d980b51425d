"""The project's documents say only what is there: no file cites a document outside the
repository, every relative link in README.md and docs/ leads to a file (and heading) that
exists, every repository path they name exists, and the lists they keep of the code's own
names (recipe tables, built-in rewards, import rules) are the code's."""

import importlib.util
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP_DIRS = {".git", ".venv", "runs", "node_modules", "__pycache__", "build", "dist"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg"}
TEXT_NAMES = {"Makefile", "Dockerfile"}
# Built in two parts so that this file does not match itself.
OUTSIDE_DOCUMENT = re.compile(r"\b" + "DE" "SIGN" + r"\b")


def _project_text_files() -> list[Path]:
    files = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        files += [Path(folder, name) for name in names if Path(name).suffix in TEXT_SUFFIXES or name in TEXT_NAMES]
    return files


def test_no_file_cites_a_document_outside_the_repository():
    citing = {}
    for path in _project_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE_DOCUMENT.search(line):
                citing.setdefault(str(path.relative_to(REPO)), []).append(number)
    assert citing == {}, "these lines cite a design document that is not in the repository"


def _prose(path: Path) -> str:
    """A markdown file without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+?)\s*$", _prose(path), flags=re.M)}


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_somewhere(doc):
    broken = []
    for target in LINK.findall(_prose(doc)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert broken == []


# A path into the repository's own folders, as the documents name them (`cluster/roles/intake.py`).
REPO_PATH = re.compile(r"(?<![\w/.-])((?:cluster|actors|learner|rewards|tests|bench|deploy)/[\w/.-]*\w\.(?:py|toml|yaml|md))"
                       r"(?![\w/])")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_paths_exist(doc):
    text = doc.read_text(encoding="utf-8")
    missing = sorted({p for p in REPO_PATH.findall(text) if not (REPO / p).exists()})
    assert missing == []


def test_the_scanners_see_what_they_should():
    assert REPO_PATH.findall("see `cluster/roles/intake.py` and cluster/run/stop.py, not deploy/recipes/*.toml") \
        == ["cluster/roles/intake.py", "cluster/run/stop.py"]
    assert LINK.findall("[a](docs/x.md#y) and [b](https://x.org)") == ["docs/x.md#y", "https://x.org"]
    assert _slug("How the driver waits") == "how-the-driver-waits"
    assert _slug("`aha pipeline`") == "aha-pipeline"
    assert OUTSIDE_DOCUMENT.search("see " + "DE" "SIGN" + ".md section 4")
    assert not OUTSIDE_DOCUMENT.search("the design workload")


def test_every_recipe_table_is_in_the_recipes_document():
    from cluster.recipe.keys import tables

    text = (REPO / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert [name for name, _ in tables() if f"`[{name}]`" not in text] == []


def test_every_built_in_reward_is_in_the_roles_document():
    from rewards import REGISTRY

    text = (REPO / "docs" / "roles.md").read_text(encoding="utf-8")
    assert [name for name in REGISTRY if f"`{name}`" not in text] == []


def test_the_import_rules_drawn_are_the_enforced_ones():
    spec = importlib.util.spec_from_file_location("layout_rules", REPO / "tests" / "test_layout.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    drawn = {}
    for row in re.findall(r"^\| `([\w.]+)`[^|]*\| (.+?) \|$", (REPO / "docs" / "architecture.md").read_text(), re.M):
        unit, allowed = row
        drawn[unit] = set() if allowed == "nothing of the project" else set(re.findall(r"`([\w.]+)`", allowed))
    assert drawn == layout.IMPORT_RULES
