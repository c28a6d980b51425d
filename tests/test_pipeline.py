"""Pipeline recipes (cluster/recipe/pipeline.py) and the pipeline's plan of what to skip, resume or
run (cluster/commands/pipeline.py), on plain files: no engines. The real stack runs in
tests/test_stack_pipeline.py."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.inputs.tiny_recipe import tiny_recipe_table, write_tiny_recipe
from cluster.output.pipeline_report import (STAGE_DONE_FILE, read_stage_done, summary_table, write_stage_done,
                                            write_summary)
from cluster.commands.pipeline import STAGE_COMMANDS, plan, run_pipeline
from cluster.recipe import RecipeError
from cluster.recipe.pipeline import STAGE_KINDS, load_pipeline, pipeline_from_dict
from cluster.recipe.tables import definition_changes
from checkpoint_helpers import fake_checkpoint

AHA = str(Path(sys.executable).with_name("aha"))
# The base recipe of these pipelines: the tiny recipe reduced to what a pipeline's plan reads
# (no engine starts here).
BASE = {
    "model.path": "{root}/base-model", "model.tiny": {"hidden_size": 128},
    "data": {"train_path": "{root}/train.parquet", "eval_path": "{root}/eval.parquet"},
    "rollout": None, "reward": {"weights": {"arithmetic": 1.0, "format": 0.1}}, "algorithm": None, "learner": None,
    "cluster": {"num_cpus": 4}, "eval": None, "run": None,
}
R1 = {
    **BASE,
    "pipeline": {"name": "r1", "output_dir": "{root}/out", "stages": ["cold_start", "rl", "rejection", "sft2"]},
    "stages.cold_start": {"kind": "sft", "sft": {"train_path": "{root}/cold.parquet"}},
    "stages.rl": {"kind": "train", "run": {"steps": 40}, "reward": {"weights": {"format": 1.0}}},
    "stages.rejection": {"kind": "generate"},
    "stages.sft2": {"kind": "sft", "model_from": "rl", "traces_from": "rejection"},
}
TWO = {
    **BASE,
    "pipeline": {"output_dir": "{root}/out", "stages": ["a", "b"]},
    "stages.a": {"kind": "train", "run": {"steps": 2}},
    "stages.b": {"kind": "train", "run": {"steps": 3}},
}


def parse(recipe: dict, root="/r", **edits):
    """The pipeline of `recipe` (tiny-recipe overrides) with `edits`: keys with __ for dots, None removes."""
    edited = dict(recipe)
    for key, value in edits.items():
        edited.pop(key.replace("__", "."), None)  # an edit goes last, after every override it changes
        edited[key.replace("__", ".")] = value
    return pipeline_from_dict(tiny_recipe_table(root, edited))


def error_of(recipe: dict, **edits) -> str:
    with pytest.raises(RecipeError) as caught:
        parse(recipe, **edits)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_each_stage_is_the_base_with_its_overrides_and_its_paths_set_by_the_pipeline():
    pipeline = parse(R1)
    assert pipeline.name == "r1" and pipeline.output_dir == Path("/r/out")
    cold, rl, rejection, sft2 = pipeline.stages
    assert [s.kind for s in pipeline.stages] == ["sft", "train", "generate", "sft"]
    # The first stage starts from the base model and keeps what builds it; the others start from
    # the nearest earlier stage that makes a model (or the one named), without it.
    assert cold.model_from == "base" and cold.recipe.model.path == "/r/base-model" and cold.recipe.model.tiny
    assert rl.model_from == "cold_start" and rl.recipe.model.path == "/r/out/cold_start/final"
    assert rejection.model_from == "rl" and rejection.recipe.model.path == "/r/out/rl/final"
    assert sft2.model_from == "rl" and sft2.recipe.model.path == "/r/out/rl/final"
    assert all(s.recipe.model.tiny is None for s in (rl, rejection, sft2))
    assert [str(s.output_dir) for s in pipeline.stages] == [f"/r/out/{s}" for s in ("cold_start", "rl", "rejection",
                                                                                       "sft2")]
    assert sft2.recipe.sft.train_path == "/r/out/rejection/traces.parquet"
    assert cold.recipe.sft.train_path == "/r/cold.parquet"
    # Overrides replace a table-valued setting whole and leave the rest of a section as in the base.
    assert rl.recipe.reward.weights == {"format": 1.0} and cold.recipe.reward.weights == {"arithmetic": 1.0,
                                                                                           "format": 0.1}
    assert rl.recipe.run.steps == 40 and cold.recipe.run.steps == 100 and rl.recipe.run.name == "rl"
    assert pipeline.base.model.tiny is not None and pipeline.base.data.eval_path == "/r/eval.parquet"


def test_the_output_root_defaults_to_runs_name_and_the_name_to_the_file(tmp_path):
    recipe = write_tiny_recipe(tmp_path / "my-chain.toml", {**TWO, "pipeline.output_dir": None})
    pipeline = load_pipeline(recipe, ["--rollout.group_size", "4"])
    assert pipeline.name == "my-chain" and pipeline.output_dir == Path("runs/my-chain")
    assert all(s.recipe.rollout.group_size == 4 for s in pipeline.stages)  # overrides apply to the base
    # The pipeline's own settings can be overridden too (aha submit needs an absolute output root).
    moved = load_pipeline(recipe, ["--pipeline.output_dir", "/mnt/runs/chain", "--pipeline.evaluate=false",
                                   "--rollout.group_size", "4"])
    assert moved.output_dir == Path("/mnt/runs/chain") and not moved.evaluate
    assert all(str(s.output_dir).startswith("/mnt/runs/chain/") for s in moved.stages)
    for bad, message in ((["--pipeline.root", "x"], "pipeline.root: unknown key (known: name, output_dir"),
                         (["--pipeline.evaluate", "yes"], "pipeline.evaluate: expected true or false"),
                         (["--pipeline.name"], "pipeline.name: override has no value")):
        with pytest.raises(RecipeError, match=f"^{re.escape(message)}"):
            load_pipeline(recipe, bad)


@pytest.mark.parametrize("edits, expected", [
    ({"stages__sft2__model_from": "nope"}, "stages.sft2.model_from: there is no stage 'nope' before 'sft2'"),
    ({"stages__rl__model_from": "sft2"}, "stages.rl.model_from: stage 'sft2' comes after 'rl'"),
    ({"stages__rl__model_from": "rl"}, "stages.rl.model_from: names the stage itself"),
    ({"stages__sft2__model_from": "rejection"}, "stages.sft2.model_from: stage 'rejection' is a generate stage "
                                                "and makes no model"),
    ({"stages__rl__kind": "distil"}, "stages.rl.kind: is 'distil'; it must be one of 'train', 'generate', 'sft'"),
    ({"stages__rl__kind": None}, "stages.rl.kind: is missing"),
    ({"stages__rl__kind": ["train"]}, "stages.rl.kind: is ['train']; it must be one of"),
    ({"stages__rl__run__stepz": 3}, "stages.rl.run.stepz: unknown key (known:"),
    ({"stages__rl__rollout__group_size": 1}, "stages.rl.rollout.group_size: group size 1 gives no group baseline"),
    ({"stages__rl__runs": {"steps": 3}}, "stages.rl.runs: unknown key (stage keys: kind, model_from, traces_from;"),
    ({"stages__rl__run": 3}, "stages.rl.run: expected a table of run keys, got int"),
    ({"stages__rl__eval__k": [0]}, "stages.rl.eval.k: every k must be >= 1"),
    ({"pipeline__stages": ["cold_start", "rl", "cold_start"]}, "pipeline.stages: 'cold_start' is listed twice"),
    ({"pipeline__stages": []}, "pipeline.stages: is empty"),
    ({"pipeline__stages": "rl"}, "pipeline.stages: must be a list of stage names"),
    ({"pipeline__stages": ["cold_start", "rl", "rejection", "sft2", "more"]},
     "stages.more: is listed in pipeline.stages but has no [stages.more] table"),
    ({"pipeline__stages": ["cold_start", "rl", "rejection"]}, "stages.sft2: is not in pipeline.stages"),
    ({"pipeline__stages": ["base"], "stages": {"base": {"kind": "train"}}}, "pipeline.stages: 'base' is reserved"),
    ({"pipeline__stages": ["a/b"], "stages": {"a/b": {"kind": "train"}}},
     "pipeline.stages: stage name 'a/b' must be letters"),
    ({"pipeline__colour": "red"}, "pipeline.colour: unknown key (known: name, output_dir, stages, evaluate)"),
    ({"pipeline__name": "my run"}, "pipeline.name: 'my run' must be letters"),
    ({"stages__rl__traces_from": "cold_start"}, "stages.rl.traces_from: a train stage does not train on traces"),
    ({"stages__sft2__traces_from": "rl"}, "stages.sft2.traces_from: stage 'rl' is a train stage and writes no traces"),
    ({"stages__sft2__sft": {"train_path": "x.parquet"}}, "stages.sft2.sft.train_path: is set from traces_from"),
    ({"stages__cold_start__sft": None}, "stages.cold_start.traces_from: a sft stage trains on traces"),
    ({"stages__rl__model": {"path": "other"}}, "stages.rl.model.path: describes the base model"),
    ({"stages__rl__model": {"tiny": {"hidden_size": 64}}}, "stages.rl.model.tiny: describes the base model"),
    ({"stages__rl__run__output_dir": "x"}, "stages.rl.run.output_dir: is set by the pipeline"),
    ({"run": {"output_dir": "x"}}, "run.output_dir: is not for a pipeline's base recipe"),
    ({"data__eval_path": None}, "data.eval_path: the pipeline evaluates every stage's model on held-out problems"),
    ({"pipeline": None}, "pipeline: a pipeline recipe needs a [pipeline] table"),
    # A combination broken by a stage's override of another key names the key and the stage.
    ({"stages__rl__rollout__max_new_tokens": 4000}, "rollout.max_model_len: 2048 is shorter than"),
    ({"model__tiny__hidden_size": 100}, "model.tiny.hidden_size: must be a positive multiple of 64"),
])
def test_a_mistake_anywhere_is_one_line_naming_the_key(edits, expected):
    assert error_of(R1, **edits).startswith(expected)


def test_a_combination_a_stage_breaks_names_the_stage():
    message = error_of(R1, stages__rl__rollout__max_new_tokens=4000)
    assert message.endswith("(in stage 'rl')"), message


def test_evaluation_can_be_turned_off():
    pipeline = parse(R1, data__eval_path=None, pipeline__evaluate=False)
    assert not pipeline.evaluate


def test_every_kind_names_a_driver_and_what_it_leaves():
    assert set(STAGE_KINDS) >= {"train", "generate", "sft", "eval"}
    for kind in STAGE_KINDS.values():
        assert kind.product
        assert not (kind.makes_model and kind.makes_traces)


# ---------------------------------------------------------------------------------------
# The plan: finished stages are skipped, the interrupted one resumed, changed ones refused.


def finish(stage, definition=None):
    """What a stage leaves when its driver returned and the pipeline marked it."""
    out = stage.output_dir
    (out / stage.spec.product).mkdir(parents=True)
    (out / ".aha-run").write_text("{}")
    write_stage_done(out, {"stage": stage.name, "definition": definition or json.loads(
        json.dumps(stage.definition()))})


def test_finished_stages_are_skipped_and_the_interrupted_one_resumed(tmp_path):
    pipeline = parse(TWO, root=tmp_path)
    a, b = pipeline.stages
    fresh = plan(pipeline)
    assert [(s.run, s.resume, s.overwrite) for s in fresh] == [(True, False, False), (True, False, True)]
    finish(a)
    (b.output_dir / ".aha-run").parent.mkdir(parents=True)
    (b.output_dir / ".aha-run").write_text("{}")  # interrupted before its first checkpoint: starts again
    assert [(s.run, s.resume, s.overwrite) for s in plan(pipeline)] == [(False, False, False), (True, False, True)]
    fake_checkpoint(b.output_dir / "checkpoints", 2)  # ... after one: resumed
    steps = plan(pipeline)
    assert [(s.run, s.resume) for s in steps] == [(False, False), (True, True)] and "resuming" in steps[1].why
    assert plan(pipeline, start_from="a")[0].overwrite and plan(pipeline, overwrite=True)[1].overwrite


def test_a_finished_stage_whose_definition_changed_is_refused_naming_the_key(tmp_path):
    a, b = parse(TWO, root=tmp_path).stages
    finish(a)
    finish(b)
    assert [s.run for s in plan(parse(TWO, root=tmp_path))] == [False, False]
    # Resources and cadence are not a change; the length is, and so is a base key.
    assert [s.run for s in plan(parse(TWO, root=tmp_path, cluster__timeout_s=5.0, stages__b__run__log_every=2))] \
        == [False, False]
    with pytest.raises(RecipeError) as caught:
        plan(parse(TWO, root=tmp_path, stages__b__run__steps=4))
    assert str(caught.value).startswith("run.steps: stage 'b' finished with 3 and the recipe now says 4; to rerun "
                                        "it and the stages after it pass --from b, to rerun every stage --overwrite")
    with pytest.raises(RecipeError, match=r"^learner.lr: stage 'a' finished with 1e-06 "):
        plan(parse(TWO, root=tmp_path, learner__lr=1e-4))
    # --from the changed stage reruns it, and every later one, afresh.
    steps = plan(parse(TWO, root=tmp_path, stages__b__run__steps=4), start_from="b")
    assert [(s.run, s.overwrite) for s in steps] == [(False, False), (True, True)]
    # A finished stage whose model was removed runs again, and the stages after it do too.
    import shutil
    shutil.rmtree(a.output_dir / "final")
    assert [(s.run, s.overwrite) for s in plan(parse(TWO, root=tmp_path))] == [(True, True), (True, True)]


def test_a_moved_pipeline_directory_is_the_same_pipeline(tmp_path):
    a, b = parse(TWO, root=tmp_path, pipeline__output_dir=str(tmp_path / "one")).stages
    moved = parse(TWO, root=tmp_path, pipeline__output_dir=str(tmp_path / "two")).stages[1]
    assert moved.recipe.model.path == str(tmp_path / "two" / "a" / "final")
    assert definition_changes(json.loads(json.dumps(b.definition())), moved.definition()) == []
    assert b.definition()["recipe"]["model"]["path"] == "<stage a>/final"


def test_an_unknown_from_stage_is_refused():
    with pytest.raises(RecipeError, match=r"^--from: there is no stage 'c' \(stages: a, b\)"):
        plan(parse(TWO), start_from="c")


def test_every_kind_runs_its_own_command_module():
    # The kinds name the command functions themselves: a renamed command breaks the import here,
    # not a dotted string at run time.
    from cluster.commands import distill, generate, pipeline, sft, train

    assert set(STAGE_COMMANDS) == set(STAGE_KINDS)
    assert STAGE_COMMANDS["train"].run is train.train and STAGE_COMMANDS["sft"].run is sft.sft
    assert STAGE_COMMANDS["generate"].run is generate.generate and STAGE_COMMANDS["distill"].run is distill.distill
    assert STAGE_COMMANDS["eval"].run is pipeline.evaluate_stage and STAGE_COMMANDS["eval"].can_resume is None


def test_a_bad_pipeline_on_the_command_line_is_one_line_exit_2_and_writes_nothing(tmp_path):
    recipe = write_tiny_recipe(tmp_path / "bad.toml", {**TWO, "stages.b.model_from": "c"})
    done = subprocess.run([AHA, "pipeline", str(recipe)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "aha: error: stages.b.model_from: there is no stage 'c' before 'b' (it can name: a, base)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_the_summary_table_and_plot(tmp_path):
    rows = [{"stage": "base", "kind": "base model", "model": "m0",
             "metrics": {"eval/accuracy": 0.1, "eval/response_length_mean": 12.0, "eval/pass@4": 0.3}},
            {"stage": "rl", "kind": "train", "model": "out/rl/final",
             "metrics": {"eval/accuracy": 0.55, "eval/response_length_mean": 30.25, "eval/pass@4": 0.8}},
            {"stage": "sft", "kind": "sft", "model": "out/sft/final", "from": "base",
             "metrics": {"eval/accuracy": 0.3, "eval/response_length_mean": 20.0, "eval/pass@4": 0.5}}]
    table = summary_table(rows).splitlines()
    assert table[0] == "| stage | kind | accuracy | change | from | mean length | pass@4 | model |"
    assert table[2] == "| base | base model | 10.0% | - | - | 12.0 | 30.0% | m0 |"
    assert table[3] == "| rl | train | 55.0% | +45.0 | base | 30.2 | 80.0% | out/rl/final |"  # the row before
    assert table[4] == "| sft | sft | 30.0% | +20.0 | base | 20.0 | 50.0% | out/sft/final |"  # where it started
    assert write_summary(tmp_path, rows, num_prompts=8) == "\n".join(table)
    assert (tmp_path / "pipeline.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "pipeline.md").read_text() == "\n".join(table) + "\n"


def test_an_unreadable_done_marker_means_not_finished(tmp_path):
    (tmp_path / STAGE_DONE_FILE).write_text("{torn")
    assert read_stage_done(tmp_path) is None


def test_a_setting_added_since_a_stage_finished_is_no_change_at_its_default():
    stage = parse(TWO).stages[0]
    saved = json.loads(json.dumps(stage.definition()))
    del saved["recipe"]["learner"]["packing"]  # as a stage finished before aha had the key
    assert "synthetic" not in saved["recipe"]["data"]  # an optional table the base does not have
    assert definition_changes(saved, stage.definition()) == []
    with_synthetic = parse(TWO, data__synthetic={"task": "arithmetic"}).stages[0].definition()
    assert [key for key, _, _ in definition_changes(saved, with_synthetic)] == ["data.synthetic"]
    saved["recipe"]["learner"]["packing"] = False
    assert definition_changes(saved, stage.definition()) == [("learner.packing", False, True)]


def test_a_first_stage_that_fails_before_writing_leaves_no_root_and_keeps_what_others_wrote(tmp_path, monkeypatch):
    import cluster.commands.pipeline as driver

    def failing(recipe, *, resume, overwrite):
        raise RecipeError("data.train_path", "a stand-in for a stage's own preflight failing")

    def builds_then_fails(recipe, *, resume, overwrite):
        (tmp_path / "out" / "base-model").mkdir()  # e.g. the base model, built inside the root
        failing(recipe, resume=resume, overwrite=overwrite)

    pipeline = parse(TWO, root=tmp_path)
    monkeypatch.setattr(driver, "_driver", lambda stage: failing)
    with pytest.raises(RecipeError, match="a stand-in"):
        run_pipeline(pipeline)
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(driver, "_driver", lambda stage: builds_then_fails)
    with pytest.raises(RecipeError, match="a stand-in"):
        run_pipeline(pipeline)
    assert (tmp_path / "out" / "base-model").is_dir()


DISTILL = {
    **BASE,
    "distill.teacher": "{root}/teacher",
    "pipeline": {"output_dir": "{root}/out", "stages": ["traces", "sft", "student"]},
    "stages.traces": {"kind": "generate", "model_from": "teacher"},
    "stages.sft": {"kind": "sft", "model_from": "base", "traces_from": "traces"},
    "stages.student": {"kind": "distill", "model_from": "base", "run": {"steps": 5}},
}


def test_a_distillation_pipeline_samples_from_the_teacher_and_distils_the_base_model():
    pipeline = parse(DISTILL)
    traces, sft, student = pipeline.stages
    # model_from = "teacher": the base recipe's distill.teacher, loaded as it is (nothing to build).
    assert traces.recipe.model.path == "/r/teacher" and traces.recipe.model.tiny is None
    assert traces.definition()["recipe"]["model"]["path"] == "/r/teacher"
    # Only distill stages keep the teacher: the others would otherwise be refused by their drivers.
    assert traces.recipe.distill.teacher == "" and sft.recipe.distill.teacher == ""
    assert student.recipe.distill.teacher == "/r/teacher" and student.recipe.model.path == "/r/base-model"
    assert student.spec.makes_model and STAGE_COMMANDS[student.kind].run.__module__ == "cluster.commands.distill"


def test_distillation_stages_without_a_teacher_are_refused_in_one_line():
    with pytest.raises(RecipeError, match=r"^stages.traces.model_from: 'teacher' is the base recipe's distill.teacher, "
                                          "which is not set$"):
        parse(DISTILL, distill=None)
    with pytest.raises(RecipeError, match=r"^stages.student.distill.teacher: a distill stage needs a teacher"):
        parse(DISTILL, distill=None, stages__traces__model_from=None)
    with pytest.raises(RecipeError, match=r"^pipeline.stages: .*teacher"):
        parse(DISTILL, pipeline__stages=["teacher"], stages={"teacher": {"kind": "train"}})
