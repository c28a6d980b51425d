"""`aha submit`'s checks and the job it builds (cluster/submit.py); the submission itself runs
against a real two-node cluster in tests/test_stack_cluster.py."""

import shlex
import subprocess

import pytest

from cluster.cli import main
from cluster.recipe import RecipeError, load_recipe
from cluster.submit import check_output_on_shared_storage, env_pairs, job_entrypoint

RECIPE = '[model]\npath = "Qwen/Qwen2.5-0.5B"\n[data]\ntrain_path = "data/train.parquet"\n[run]\noutput_dir = "{out}"\n'


def test_the_job_runs_the_recipe_inside_the_shipped_directory_and_joins_the_cluster(tmp_path):
    recipe = tmp_path / "deploy" / "r.toml"
    recipe.parent.mkdir()
    recipe.write_text(RECIPE.format(out="/mnt/runs/x"))
    command = job_entrypoint("train", recipe, ["--run.steps", "5"], "/opt/venv/bin/python", tmp_path)
    assert shlex.split(command) == ["/opt/venv/bin/python", "-m", "cluster.cli", "train", "deploy/r.toml",
                                    "--run.steps", "5", "--cluster.address", "auto"]
    with pytest.raises(RecipeError, match="outside the working directory"):
        job_entrypoint("train", recipe, [], "python", tmp_path / "deploy" / "elsewhere")
    # Ray's packaging leaves git-ignored files out: such a recipe would not reach the cluster.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("deploy/\n")
    with pytest.raises(RecipeError, match="is git-ignored"):
        job_entrypoint("train", recipe, [], "python", tmp_path)


def test_a_relative_output_directory_is_refused_before_anything_is_sent(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(out="runs/x"))
    with pytest.raises(RecipeError, match="run.output_dir: is 'runs/x', a relative path"):
        check_output_on_shared_storage(load_recipe(recipe, ["--cluster.address", "auto"]), "train")
    check_output_on_shared_storage(load_recipe(recipe, ["--run.output_dir", "/mnt/x", "--cluster.address", "auto"]),
                                   "train")
    monkeypatch.chdir(tmp_path)
    # Nothing listens at this address: the error comes first, so no connection is tried.
    assert main(["submit", str(recipe), "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a relative path" in err[0]


def test_env_pairs():
    assert env_pairs(["A=1", "HF_HOME=/mnt/hf", "EMPTY="]) == {"A": "1", "HF_HOME": "/mnt/hf", "EMPTY": ""}
    for bad in ("A", "=1", "A-B=1"):
        with pytest.raises(RecipeError, match="expected KEY=VALUE"):
            env_pairs([bad])
