"""Typed recipes (cluster.recipe): the shipped recipe, defaults, overrides and `aha check` on good
recipes; refused recipes are tests/test_config_refused.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.recipe import load_recipe, recipe_from_dict, recipe_to_dict
from cluster.recipe.schema import (
    AlgorithmConfig,
    ClusterConfig,
    PretrainConfig,
    SyntheticDataConfig,
    TinyModelConfig,
)

from recipe_helpers import SHIPPED, assert_one_line_error, recipe_error, run_check, write_recipe


# ---------------------------------------------------------------- parsing the shipped recipe


def test_shipped_recipe_values():
    r = load_recipe(SHIPPED)
    assert r.model.path == "runs/demo/base-model" and r.model.dtype == "float32"
    assert r.model.tiny == TinyModelConfig(hidden_size=128, num_layers=2, num_kv_heads=2, seed=0)
    assert r.model.pretrain == PretrainConfig(steps=800, batch_size=64, lr=3e-3, warmup_steps=30,
                                              worked_fraction=0.4, seed=0)
    assert r.data.template == "{prompt}=? <think>" and r.data.max_prompt_tokens == 32
    assert r.data.eval_path == "runs/demo/data/chain-sum-eval.parquet"
    assert r.data.synthetic == SyntheticDataConfig(task="chain_sum", train_rows=4000, eval_rows=256,
                                                   min_terms=4, max_terms=4, max_term=9)
    assert r.rollout.stop == ("</answer>",) and isinstance(r.rollout.stop, tuple)
    assert (r.rollout.group_size, r.rollout.max_new_tokens, r.rollout.enforce_eager) == (8, 48, True)
    assert r.rollout.kv_cache_gb == 0.25 and r.rollout.prompts_per_step == 16
    assert r.reward.weights == {"arithmetic": 1.0, "format": 0.1}
    assert r.algorithm.clip_high == 0.28 and r.learner.lr == 5e-5
    assert (r.eval.every, r.eval.num_prompts, r.eval.k, r.eval.budgets) == (20, 256, (4,), (8, 16, 32, 48))
    assert r.cluster.device == "cpu" and r.cluster.learner_cpus == 0.5
    assert (r.run.name, r.run.steps) == ("demo", 40)
    assert r.output_dir == Path("runs/demo/rl")


def test_defaults_fill_unspecified_keys(tmp_path):
    r = load_recipe(SHIPPED)
    assert (r.rollout.top_p, r.rollout.top_k, r.rollout.weight_sync) == (1.0, -1, "wait")
    assert r.model.tiny.intermediate_size == 0 and r.model.trust_remote_code is False
    assert (r.data.synthetic.seed, r.data.synthetic.num_numbers) == (0, 3)
    assert r.data.columns == {} and r.data.prompt_column == "prompt"
    assert r.learner.adam_betas == (0.9, 0.999)
    assert r.algorithm.kl_coef == 0.0 and r.algorithm.kl_kind == "k3"
    assert r.run.reflection_words == ("wait", "let me check", "verify", "recheck")
    minimal = load_recipe(write_recipe(tmp_path))
    assert minimal.model.tiny is None and minimal.data.synthetic is None
    assert minimal.reward.weights == {"math": 1.0}
    assert minimal.algorithm == AlgorithmConfig() and minimal.run.name == "run"
    assert minimal.cluster == ClusterConfig(num_cpus=8)
    assert minimal.output_dir == Path("runs/run")


def test_recipe_is_frozen():
    r = load_recipe(SHIPPED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.rollout.group_size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.model.tiny.seed = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.run = None
    assert r.rollout.group_size == 8


def test_defaults_alone_need_a_model_path():
    assert recipe_error(None).key == "model.path"


@pytest.mark.parametrize("overrides", [[], ["--model.tiny.seed", "7", "--rollout.stop", "a,b"]])
def test_dict_round_trip(tmp_path, overrides):
    for path in (SHIPPED, write_recipe(tmp_path)):
        r = load_recipe(path, overrides)
        plain = recipe_to_dict(r)
        json.dumps(plain)  # plain data only
        assert recipe_from_dict(plain) == r
    assert "tiny" not in recipe_to_dict(load_recipe(write_recipe(tmp_path)))["model"]
    assert recipe_to_dict(load_recipe(SHIPPED))["rollout"]["stop"] == ["</answer>"]


# ---------------------------------------------------------------- overrides

OVERRIDES = [
    (["--rollout.group_size", "4"], "rollout.group_size", 4),
    (["--rollout.temperature", "0.7"], "rollout.temperature", 0.7),
    (["--rollout.temperature", "2"], "rollout.temperature", 2.0),  # int literal, float field
    (["--rollout.top_k", "-1"], "rollout.top_k", -1),
    (["--rollout.enforce_eager", "false"], "rollout.enforce_eager", False),
    (["--learner.gradient_checkpointing", "true"], "learner.gradient_checkpointing", True),
    (["--model.path", "/tmp/my models/tiny 1"], "model.path", "/tmp/my models/tiny 1"),
    (["--run.name", "123"], "run.name", "123"),
    (["--data.system_prompt", '"quoted" [x] = 1'], "data.system_prompt", '"quoted" [x] = 1'),
    (["--data.template", "Q: {prompt}\nA:"], "data.template", "Q: {prompt}\nA:"),
    (["--algorithm.estimator", "rloo"], "algorithm.estimator", "rloo"),
    (["--cluster.device", "cuda"], "cluster.device", "cuda"),
    (["--learner.lr=3e-5"], "learner.lr", 3e-5),
    (["--data.system_prompt=a=b"], "data.system_prompt", "a=b"),
    (["--rollout.stop", '["</answer>", "\\n\\n"]'], "rollout.stop", ("</answer>", "\n\n")),
    (["--rollout.stop", "</answer>, END"], "rollout.stop", ("</answer>", "END")),
    (["--rollout.stop", "[]"], "rollout.stop", ()),
    (["--learner.adam_betas", "[0.9, 0.95]"], "learner.adam_betas", (0.9, 0.95)),
    (["--run.reflection_words", "wait,hmm"], "run.reflection_words", ("wait", "hmm")),
    (["--reward.weights", "{math = 1, format = 0.5}"], "reward.weights", {"math": 1.0, "format": 0.5}),
    (["--reward.weights", '{"my_pkg.rewards:score" = 2.0}'], "reward.weights", {"my_pkg.rewards:score": 2.0}),
    (["--data.columns", '{answer = "solution"}'], "data.columns", {"answer": "solution"}),
    (["--model.tiny.seed", "3"], "model.tiny", TinyModelConfig(seed=3)),
    (["--model.tiny", "{hidden_size = 64}"], "model.tiny", TinyModelConfig(hidden_size=64)),
    (["--data.synthetic.eval_rows", "0"], "data.synthetic", SyntheticDataConfig(eval_rows=0)),
    (["--rollout.group_size", "4", "--rollout.group_size", "6"], "rollout.group_size", 6),
    (["--model.tiny.seed", "3", "--model.tiny.num_layers", "5"], "model.tiny",
     TinyModelConfig(seed=3, num_layers=5)),
]


def attr(recipe, dotted: str):
    value = recipe
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("overrides, dotted, expected", OVERRIDES,
                         ids=[" ".join(case[0])[:40] for case in OVERRIDES])
def test_override(tmp_path, overrides, dotted, expected):
    value = attr(load_recipe(write_recipe(tmp_path), overrides), dotted)
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_win_over_the_file_in_order():
    r = load_recipe(SHIPPED, ["--rollout.group_size", "4", "--model.tiny.seed=9",
                              "--rollout.group_size", "16", "--reward.weights", "{math = 1}"])
    assert r.rollout.group_size == 16
    assert r.model.tiny == TinyModelConfig(hidden_size=128, num_layers=2, num_kv_heads=2, seed=9)
    assert r.reward.weights == {"math": 1.0}  # a dict override replaces the file's table
    assert r.rollout.prompts_per_step == 16  # untouched keys keep the file's value


@pytest.mark.parametrize("overrides, dotted, expected", [
    (["--learner.adam_betas", "0.9,0.95"], "learner.adam_betas", (0.9, 0.95)),
    (["--rollout.stop", "42"], "rollout.stop", ("42",)),
])
def test_comma_list_follows_the_element_type(tmp_path, overrides, dotted, expected):
    assert attr(load_recipe(write_recipe(tmp_path), overrides), dotted) == expected


def test_remote_cluster_skips_the_local_cpu_budget(tmp_path):
    r = load_recipe(write_recipe(tmp_path), ["--cluster.address", "ray://head:10001",
                                             "--cluster.num_cpus", "1", "--learner.num_ranks", "64",
                                             "--rollout.prompts_per_step", "64"])
    assert r.learner.num_ranks == 64 and r.cluster.address == "ray://head:10001"


def test_limits_accept_their_edges(tmp_path):
    r = load_recipe(write_recipe(tmp_path), [
        "--run.seed", str(2**32 - 1), "--rollout.group_size", "16384", "--eval.k", "16384",
        "--rollout.temperature", "2.0", "--run.steps", "3", "--algorithm.max_staleness", "2",
        "--rollout.max_new_tokens", "64", "--reward.overlong_buffer_tokens", "63", "--reward.overlong_penalty", "0",
        # On CPU vLLM's token budget grows to max_model_len (chunked prefill off), and so may max_num_seqs.
        "--cluster.device", "cpu", "--rollout.max_model_len", "4096", "--rollout.max_num_seqs", "4096"])
    assert (r.run.seed, r.rollout.group_size, r.algorithm.max_staleness) == (2**32 - 1, 16384, 2)
    assert recipe_error(write_recipe(tmp_path), ["--rollout.max_model_len", "4096", "--rollout.max_num_seqs",
                                                 "4096"]).key == "rollout.max_num_seqs"  # "auto": maybe a GPU


def test_vllm_max_n_follows_its_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_MAX_N_SEQUENCES", "20000")
    assert load_recipe(write_recipe(tmp_path), ["--rollout.group_size", "20000"]).rollout.group_size == 20000


def test_cpu_budget_fits_exactly(tmp_path):
    r = load_recipe(write_recipe(tmp_path), ["--cluster.num_cpus", "3"])  # 1 + 1 + 1 CPUs
    assert r.cluster.num_cpus == 3


# ---------------------------------------------------------------- the CLI on good recipes


def test_cli_check_prints_the_resolved_recipe():
    proc = run_check(SHIPPED, "--rollout.group_size", "4", "--model.tiny.seed=5", "--run.name", "123")
    assert proc.returncode == 0 and proc.stderr == ""
    printed = json.loads(proc.stdout)
    assert printed["rollout"]["group_size"] == 4 and printed["rollout"]["stop"] == ["</answer>"]
    assert printed["model"]["tiny"]["seed"] == 5 and printed["run"]["name"] == "123"
    assert printed["rollout"]["top_p"] == 1.0  # defaults are printed too
    assert recipe_from_dict(printed) == load_recipe(
        SHIPPED, ["--rollout.group_size", "4", "--model.tiny.seed", "5", "--run.name", "123"])


def test_aha_console_script(tmp_path):
    aha = Path(sys.executable).with_name("aha")
    ok = subprocess.run([aha, "check", SHIPPED, "--rollout.temperature", "0"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and json.loads(ok.stdout)["rollout"]["temperature"] == 0.0
    bad = subprocess.run([aha, "check", SHIPPED, "--rollout.temperature", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert_one_line_error(bad, "rollout.temperature: ")
