"""`aha submit`'s checks and the job it builds (cluster/submit.py); the submission itself runs
against a real two-node cluster in tests/test_stack_cluster.py."""

import shlex
import subprocess

import pytest

from cluster.cli import main
from cluster.recipe import RecipeError, load_recipe
from cluster.recipe.pipeline import load_pipeline
from cluster.submit import check_output_on_shared_storage, env_pairs, job_entrypoint
from test_recipes import REPO

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
        check_output_on_shared_storage(load_recipe(recipe, ["--cluster.address", "auto"]).output_dir)
    check_output_on_shared_storage(load_recipe(recipe, ["--run.output_dir", "/mnt/x", "--cluster.address",
                                                        "auto"]).output_dir)
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


def test_a_pipeline_is_submitted_only_with_its_output_on_shared_storage(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    recipe = "deploy/recipes/r1-recipe-cpu.toml"  # its pipeline.output_dir is relative (runs/...)
    assert main(["submit", recipe, "--command", "pipeline", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aha: error: pipeline.output_dir: is 'runs/") and "relative" in err[0]
    overridden = load_pipeline(recipe, ["--pipeline.output_dir", "/mnt/runs/r1", "--cluster.address", "auto"])
    check_output_on_shared_storage(overridden.output_dir, "pipeline.output_dir")
    assert str(overridden.stages[0].output_dir).startswith("/mnt/runs/r1/")
    # The entrypoint is aha pipeline on the same recipe, joining the cluster.
    command = job_entrypoint("pipeline", REPO / recipe, ["--pipeline.output_dir", "/mnt/runs/r1"], "python", REPO)
    assert shlex.split(command)[3:] == ["pipeline", recipe, "--pipeline.output_dir", "/mnt/runs/r1",
                                        "--cluster.address", "auto"]
