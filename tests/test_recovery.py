"""The pure parts of surviving failures: which errors are deaths, the restart budget and its
metrics, reading AHA_CHAOS, and the CLI's lines for a run that stopped but can resume."""

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from cluster.inputs.tiny_recipe import write_tiny_recipe
from cluster.run.chaos import ChaosError, Fault, parse_faults
from cluster.cli import main
from cluster.roles.recovery import Recovery, is_death, one_line
from cluster.wire.errors import EngineDied, RunFailed, RunInterrupted


class EngineDeadError(Exception):
    """vLLM's class of that name, as the driver sees it (matched by name: vllm is not imported there)."""


def _remote(cause: Exception) -> RayTaskError:
    """What the driver gets when an actor method raised `cause`: Ray's wrapper deriving from both."""
    return RayTaskError("score_group", "Traceback (most recent call last):\n  ...", cause).as_instanceof_cause()


def test_deaths_are_told_from_bugs_and_bad_input():
    assert is_death(ActorDiedError())
    assert is_death(_remote(EngineDied("EngineCore encountered an issue.")))
    assert is_death(_remote(EngineDeadError("EngineCore encountered an issue.")))
    assert not is_death(_remote(ValueError("prompt too long")))
    assert not is_death(ValueError("prompt too long"))
    assert not is_death(TimeoutError("no group within 600 s"))


def test_one_line_takes_the_cause_and_its_first_line():
    assert one_line(_remote(ValueError("bad\nmore"))) == "ValueError: bad"
    assert one_line(EngineDeadError("EngineCore died", "again")) == "EngineDeadError: EngineCore died"
    assert one_line(ActorDiedError()).startswith("ActorDiedError: ")


def test_restarts_are_counted_per_role_up_to_the_budget(capsys):
    recovery = Recovery(max_restarts=2)
    recovery.allow_restart("rollout", "rollout worker 0 died (X)")
    recovery.allow_restart("rollout", "rollout worker 1 died (X)")
    recovery.allow_restart("scorer", "reward scorer 0 died (X)")  # a budget of its own
    with pytest.raises(RunInterrupted, match=r"rollout worker 0 died \(X\); the 2 rollout restarts that "
                                             r"cluster.max_restarts allows are used up"):
        recovery.allow_restart("rollout", "rollout worker 0 died (X)")
    assert "replacing it (rollout restart 2 of 2)" in capsys.readouterr().out
    with pytest.raises(RunInterrupted, match="cluster.max_restarts = 0, so no scorer actor is replaced"):
        Recovery(max_restarts=0).allow_restart("scorer", "reward scorer 0 died (X)")


def test_step_metrics_report_restarts_so_far_and_the_steps_own_costs():
    recovery = Recovery(max_restarts=3)
    recovery.allow_restart("rollout", "w")
    recovery.requeued(3)
    recovery.recovered(started=0.0, what="replaced")  # perf_counter() - 0: some positive seconds
    first = recovery.step_metrics()
    assert first["restarts/rollout"] == 1 and first["restarts/scorer"] == 0
    assert first["recovery/prompts_requeued"] == 3 and first["time/recovery"] > 0
    second = recovery.step_metrics()
    assert second == {"restarts/rollout": 1.0, "restarts/scorer": 0.0, "restarts/teacher": 0.0,
                      "restarts/learner": 0.0, "recovery/prompts_requeued": 0.0, "time/recovery": 0.0}


def test_chaos_entries_are_read_strictly():
    assert parse_faults("") == []
    assert parse_faults(" rollout@generate:2, engine@push:4 ,learner@train:3,hang@generate:5,scorer@generate:1") == [
        Fault("rollout", "generate", 2), Fault("engine", "push", 4), Fault("learner", "train", 3),
        Fault("hang", "generate", 5), Fault("scorer", "generate", 1)]
    for bad in ("rollout@train:2", "gpu@push:1", "rollout@push", "rollout@push:0", "rollout@push:x", "rollout"):
        with pytest.raises(ChaosError, match=f"AHA_CHAOS: '{bad}' is not role@moment:step"):
            parse_faults(bad)


def test_a_bad_chaos_entry_is_one_line_exit_2_before_anything_is_written(tmp_path, monkeypatch, capsys):
    # Only what reading the recipe needs: AHA_CHAOS is refused before any input is built.
    recipe = write_tiny_recipe(tmp_path / "recipe.toml", {
        "model.tiny": {"hidden_size": 64},
        "data": {"train_path": "{root}/train.parquet", "eval_path": "{root}/eval.parquet",
                 "synthetic": {"task": "arithmetic"}},
        "rollout": None, "reward": None, "algorithm": None, "learner": None, "cluster": {"num_cpus": 4}, "eval": None,
        "run": {"output_dir": "{root}/run"}})
    monkeypatch.setenv("AHA_CHAOS", "rollout@train:2")
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aha: error: AHA_CHAOS: 'rollout@train:2'")
    assert not (tmp_path / "run").exists()


def test_an_interrupted_run_is_told_how_to_go_on(monkeypatch, capsys):
    def stopped(checkpoint: str):
        def run(args, overrides):
            err = RunInterrupted("learner rank 1 died during learner optimizer step (ActorDiedError: gone)")
            err.checkpoint = checkpoint
            raise err
        return run

    import cluster.cli as cli

    for checkpoint, hint in [("version-4 (step 4)", "aha: the last complete checkpoint, version-4 (step 4), is intact; "
                                                    "resume with: aha train r.toml --resume"),
                             ("", "aha: no checkpoint was written yet; start the run again (with --overwrite)")]:
        monkeypatch.setattr(cli, "cmd_train", stopped(checkpoint))
        assert main(["train", "r.toml", "--overwrite"]) == 1
        assert capsys.readouterr().err.splitlines() == [
            "aha: error: learner rank 1 died during learner optimizer step (ActorDiedError: gone)", hint]
    assert issubclass(RunInterrupted, RunFailed)
