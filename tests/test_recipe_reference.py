"""Every setting once, with its help: the schema's field metadata is what `aha check --explain`,
docs/recipe-reference.md and the resume check read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.recipe import RecipeError, load_recipe, recipe_to_dict
from cluster.recipe.keys import all_keys, find, tables
from cluster.recipe.reference import REGENERATE, explain, markdown
from cluster.recipe.resume import RESUMABLE, conflicts_text, resume_conflicts

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "deploy/recipes/arith-zero-cpu.toml"


def test_the_committed_reference_is_up_to_date():
    committed = (REPO / "docs/recipe-reference.md").read_text(encoding="utf-8")
    assert committed == markdown(), f"docs/recipe-reference.md is out of date; regenerate it: {REGENERATE}"


def test_every_setting_of_every_table_has_its_help_and_resume_rule():
    for name, cls in tables():
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{name}.{field.name} has no help"
            assert isinstance(field.metadata.get("resumable"), bool), f"{name}.{field.name}"
    assert len(all_keys()) > 100 and "distill.top_k" not in {key.dotted for key in all_keys()}


def test_what_a_resumed_run_may_change_comes_from_the_schema():
    for key in ("run.steps", "run.output_dir", "eval.k", "cluster.timeout_s", "rollout.num_workers",
                "distill.num_teachers"):
        assert key in RESUMABLE and find(key).resumable
    for key in ("learner.lr", "run.seed", "rollout.group_size", "cluster.device", "model.tiny", "data.train_path",
                "reward.weights"):
        assert key not in RESUMABLE and not find(key).resumable
    assert set(RESUMABLE) == {key.dotted for key in all_keys() if key.resumable}


def test_explain_a_key():
    text = explain("algorithm.clip_high")
    assert text.splitlines()[0] == "algorithm.clip_high: float = 0.2  (on --resume: fixed)"
    assert "clip-higher" in text
    assert explain("run.steps").splitlines()[0] == "run.steps: int = 100  (on --resume: may change)"
    assert explain("reward.weights").startswith("reward.weights: table of str to float = {math = 1.0}")
    assert explain("rollout.weight_sync").startswith('rollout.weight_sync: "wait" | "abort" = "wait"')


def test_explain_a_table_lists_its_keys():
    text = explain("rollout")
    assert text.startswith("[rollout]: a table of")
    assert all(f"\nrollout.{field.name}: " in text for field in dataclasses.fields(find("rollout").table))
    tiny = explain("model.tiny")
    assert "model.tiny.hidden_size: int = 128" in tiny and "character-level tokenizer" in tiny


@pytest.mark.parametrize("key, message", [
    ("algorithm.nope", r"^algorithm.nope: unknown key \(known: clip_high, clip_low, "),
    ("nope", r"^nope: unknown key \(known: algorithm, cluster, data, "),
    ("run.steps.x", r"^run.steps.x: run.steps is a value, not a table$"),
    ("distill.top_k", r"^distill.top_k: unknown key"),
])
def test_an_unknown_key_is_a_one_line_recipe_error(key, message):
    with pytest.raises(RecipeError, match=message) as caught:
        explain(key)
    assert "\n" not in str(caught.value)


def test_aha_check_explain(capsys):
    assert main(["check", "--explain", "learner.packing"]) == 0
    assert capsys.readouterr().out.startswith("learner.packing: bool = true  (on --resume: fixed)\n")
    assert main(["check", "--explain", "learner.nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aha: error: learner.nope: unknown key") and err.count("\n") == 1
    with pytest.raises(SystemExit) as caught:  # argparse: a recipe or --explain, exactly one
        main(["check"])
    assert caught.value.code == 2 and "one of the arguments recipe --explain is required" in capsys.readouterr().err
    assert main(["check", "--explain", "run.steps", "--run.steps=3"]) == 2
    assert "--explain takes one key and nothing else" in capsys.readouterr().err


def test_a_refused_resume_names_each_changed_key_with_both_values():
    saved = recipe_to_dict(load_recipe(RECIPE))
    current = recipe_to_dict(load_recipe(RECIPE, ["--rollout.group_size", "4", "--learner.lr", "3e-4",
                                                  "--data.train_path", "x" * 80, "--run.steps", "7"]))
    conflicts = resume_conflicts(saved, current)
    assert conflicts == ["data.train_path", "learner.lr", "rollout.group_size"]
    text = conflicts_text(saved, current, conflicts)
    assert "\n" not in text and "run.steps" not in text
    assert "learner.lr (5e-05 -> 0.0003), rollout.group_size (8 -> 4) may not change on resume" in text
    assert "'xxxxxxxx" in text and "x" * 60 not in text  # a long value is cut short


def test_a_recipe_that_still_sets_distill_top_k_is_refused():
    with pytest.raises(RecipeError, match=r"^distill.top_k: unknown key"):
        load_recipe(RECIPE, ["--distill.top_k", "3"])


def test_the_reward_weights_help_names_every_built_in_reward():
    import re

    import rewards
    from cluster.recipe.keys import find

    named = set(re.findall(r"\w+", find("reward.weights").help))
    assert set(rewards.REGISTRY) - named == set()
