"""The tiny recipe builder (cluster/inputs/tiny_recipe.py): the recipe it writes loads as the
recipe it says, and each kind of override does what its docstring says."""

import tomllib

from cluster.inputs.tiny_recipe import SAMPLING_ONLY, tiny_recipe, tiny_recipe_table, write_tiny_recipe
from cluster.recipe import load_recipe


def test_the_recipe_loads_as_a_tiny_grpo_run_under_its_root(tmp_path):
    recipe = load_recipe(write_tiny_recipe(tmp_path / "recipe.toml"))
    assert recipe.model.path == f"{tmp_path}/model" and recipe.model.tiny.hidden_size == 128
    assert recipe.data.train_path == f"{tmp_path}/data/train.parquet" and recipe.data.synthetic.task == "arithmetic"
    assert recipe.run.output_dir == f"{tmp_path}/run" and recipe.run.steps == 3
    assert recipe.learner.num_ranks == 2 and recipe.reward.weights == {"arithmetic": 1.0, "format": 0.5}
    elsewhere = load_recipe(write_tiny_recipe(tmp_path / "recipes" / "r.toml", root="/data/me"))
    assert elsewhere.model.path == "/data/me/model"


def test_an_override_sets_replaces_or_removes_a_key_or_a_table():
    overrides = {
        "run.steps": 6,  # one key; its neighbours stay
        "cluster": {"num_cpus": 2},  # a table: replaced whole
        "reward.weights": {"a.b:score": 1.0},  # a dict-valued key: replaced whole too
        "model.tiny": None, "eval": None,  # removed
        "data.template": "{prompt}=? <think>",  # braces other than {root} are kept
        "stages.a": {"kind": "train", "run": {"steps": 2}},  # new tables, nested
    }
    table = tiny_recipe_table("/r", overrides)
    assert table["run"] == {"output_dir": "/r/run", "steps": 6, "checkpoint_every": 2}
    assert table["cluster"] == {"num_cpus": 2} and table["reward"]["weights"] == {"a.b:score": 1.0}
    assert "tiny" not in table["model"] and "eval" not in table
    assert table["data"]["template"] == "{prompt}=? <think>"
    assert table["stages"] == {"a": {"kind": "train", "run": {"steps": 2}}}
    assert tomllib.loads(tiny_recipe("/r", overrides)) == table  # the TOML text says the same


def test_the_toml_text_round_trips_awkward_values():
    overrides = {"run.name": 'quote " backslash \\ newline \n é', "learner.lr": 1e-07, "rollout.stop": ["</a>", "\t"],
                 "rollout.enforce_eager": False, "data.max_prompt_tokens": 0}
    assert tomllib.loads(tiny_recipe("/r", overrides)) == tiny_recipe_table("/r", overrides)


def test_a_sampling_only_recipe_has_nothing_a_training_run_reads(tmp_path):
    recipe = load_recipe(write_tiny_recipe(tmp_path / "recipe.toml", {**SAMPLING_ONLY, "data.train_path": "p.parquet"}))
    assert recipe.model.tiny is None and recipe.data.synthetic is None
    table = tiny_recipe_table(tmp_path, SAMPLING_ONLY)
    assert not {"algorithm", "learner", "eval", "run"} & set(table)
