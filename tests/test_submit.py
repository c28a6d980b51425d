"""`aha submit`'s checks and the job it builds (cluster/commands/submit.py); the submission itself runs
against a real two-node cluster in tests/test_stack_cluster.py."""

import shlex
import subprocess
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.recipe import RecipeError, load_recipe
from cluster.recipe.pipeline import load_pipeline
from cluster.commands.submit import check_output_on_shared_storage, env_pairs, job_entrypoint, submit_when_an_agent_answers
from cluster.wire.errors import RunFailed

REPO = Path(__file__).resolve().parents[1]
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

    # With the output on shared storage the job is sent, and a job server that is not there is one line.
    assert main(["submit", str(recipe), "--address", "http://127.0.0.1:9", "--run.output_dir", "/mnt/x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["aha: error: no Ray job server answers at http://127.0.0.1:9: Failed to connect to Ray at address: "
                   "http://127.0.0.1:9. (is the cluster up? --address or RAY_ADDRESS names its dashboard)"], err


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


def test_a_submission_waits_for_the_job_agent_then_gives_up_in_one_line(capsys):
    """The job server's refusals, as Ray's SDK raises them: "No available agent" is tried again
    (nothing was submitted), any other refusal at once, and waiting is bounded."""
    no_agent = "Request failed with status code 500: No available agent to submit job, please try again later."
    refusals = iter([no_agent] * 2)

    def agent_comes_up():
        reason = next(refusals, None)
        if reason:
            raise RuntimeError(reason)
        return "job-1"

    assert submit_when_an_agent_answers(agent_comes_up, "http://head:8265", retry_s=0.01) == "job-1"
    assert capsys.readouterr().out.count("job agent is not up yet") == 2

    def never_an_agent():
        raise RuntimeError("Request failed with status code 500: No available agent to submit job.")

    with pytest.raises(RunFailed, match=r"^the Ray job server at http://head:8265 had no job agent for 0.05 s"):
        submit_when_an_agent_answers(never_an_agent, "http://head:8265", wait_s=0.05, retry_s=0.01)

    calls = []

    def bad_request():
        calls.append(1)
        raise RuntimeError("Request failed with status code 400: Traceback (most recent call last):\n  ...\n"
                           "ValueError: runtime_env is invalid")

    with pytest.raises(RunFailed, match=r"refused the job: ValueError: runtime_env is invalid$"):
        submit_when_an_agent_answers(bad_request, "http://head:8265", retry_s=0.01)
    assert len(calls) == 1
