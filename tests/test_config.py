"""Tests for typed recipes (cluster.recipe, cluster.recipe.checks) and `aha check` on bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster.recipe import RecipeError, load_recipe, recipe_from_dict, recipe_to_dict
from cluster.recipe.schema import (
    AlgorithmConfig,
    ClusterConfig,
    PretrainConfig,
    SyntheticDataConfig,
    TinyModelConfig,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "recipes" / "arith-zero-cpu.toml"

# A minimal valid recipe as top-level dotted keys, so a case can add any key (dotted, before
# it) or [sub.table] (after it) without redefining a table. num_cpus is fixed so the CPU budget
# check does not depend on this machine.
BASE = 'model.path = "models/tiny"\ndata.train_path = "data/train.parquet"\ncluster.num_cpus = 8\n'


def write_recipe(directory: Path, extra: str = "", name: str = "recipe.toml") -> Path:
    path = directory / name
    path.write_text(extra + "\n" + BASE, encoding="utf-8")
    return path


def recipe_error(path, overrides=()) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, list(overrides))
    assert "\n" not in str(info.value), "a recipe error must be one line"
    return info.value


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", "check", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aha: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


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


# ---------------------------------------------------------------- bad recipes
# (id, TOML written before BASE, overrides, the dotted key the error must name)

BAD = [
    ("unknown-section", "foo.bar = 1", [], "foo"),
    ("unknown-key", "rollout.group_sise = 4", [], "rollout.group_sise"),
    ("unknown-nested-key", "model.tiny.hidden = 64", [], "model.tiny.hidden"),
    ("section-as-scalar", "rollout = 3", [], "rollout"),
    ("nested-table-as-scalar", "model.tiny = 3", [], "model.tiny"),
    ("str-for-int", 'rollout.group_size = "8"', [], "rollout.group_size"),
    ("bool-for-int", "rollout.group_size = true", [], "rollout.group_size"),
    ("int-for-bool", "rollout.enforce_eager = 1", [], "rollout.enforce_eager"),
    ("float-for-int", "rollout.group_size = 8.0", [], "rollout.group_size"),
    ("bool-for-float", "rollout.temperature = true", [], "rollout.temperature"),
    ("list-for-str", 'run.name = ["a"]', [], "run.name"),
    ("table-for-scalar", "rollout.temperature = {x = 1}", [], "rollout.temperature"),
    ("str-for-tuple", 'rollout.stop = "</answer>"', [], "rollout.stop"),
    ("tuple-item", 'rollout.stop = ["a", 1]', [], "rollout.stop[1]"),
    ("dict-value", 'reward.weights = {math = "high"}', [], "reward.weights.math"),
    ("bad-literal", 'algorithm.estimator = "ppo"', [], "algorithm.estimator"),
    ("bad-literal-nested", 'data.synthetic = {task = "chess", eval_rows = 0}', [], "data.synthetic.task"),
    ("bad-literal-override", "", ["--cluster.device", "tpu"], "cluster.device"),
    ("negative-temperature", "rollout.temperature = -0.5", [], "rollout.temperature"),
    ("top-p-zero", "rollout.top_p = 0.0", [], "rollout.top_p"),
    ("top-k-zero", "rollout.top_k = 0", [], "rollout.top_k"),
    ("zero-stage-4", "learner.zero_stage = 4", [], "learner.zero_stage"),
    ("clip-low-1", "algorithm.clip_low = 1.0", [], "algorithm.clip_low"),
    ("dual-clip-half", "algorithm.dual_clip = 0.5", [], "algorithm.dual_clip"),
    ("tis-cap-half", "algorithm.tis_cap = 0.5", [], "algorithm.tis_cap"),
    ("lr-zero", "learner.lr = 0.0", [], "learner.lr"),
    ("one-adam-beta", "learner.adam_betas = [0.9]", [], "learner.adam_betas"),
    ("steps-0", "run.steps = 0", [], "run.steps"),
    ("uneven-groups-per-rank", "", ["--rollout.prompts_per_step", "3", "--learner.num_ranks", "2",
                                    "--cluster.num_cpus", "8"], "rollout.prompts_per_step"),
    ("temperature-inf", "rollout.temperature = inf", [], "rollout.temperature"),
    ("timeout-nan", "cluster.timeout_s = nan", [], "cluster.timeout_s"),
    ("negative-restarts", "cluster.max_restarts = -1", [], "cluster.max_restarts"),
    ("health-timeout-zero", "", ["--cluster.health_timeout_s", "0"], "cluster.health_timeout_s"),
    ("override-trailing-toml", "", ["--rollout.group_size", "4\nfoo = 5"], "rollout.group_size"),
    ("run-name-slash", 'run.name = "a/b"', [], "run.name"),
    ("run-name-dotdot", 'run.name = ".."', [], "run.name"),
    ("run-name-newline", 'run.name = "demo\\n"', [], "run.name"),
    ("tiny-hidden-size", "model.tiny.hidden_size = 100", [], "model.tiny.hidden_size"),
    ("nan-temperature", "rollout.temperature = nan", [], "rollout.temperature"),
    ("group-size-0", "rollout.group_size = 0", [], "rollout.group_size"),
    ("group-1-grpo", 'rollout.group_size = 1\nalgorithm.estimator = "grpo"', [], "rollout.group_size"),
    ("group-1-dr_grpo", 'rollout.group_size = 1\nalgorithm.estimator = "dr_grpo"', [], "rollout.group_size"),
    ("group-1-rloo", "", ["--rollout.group_size", "1", "--algorithm.estimator", "rloo"], "rollout.group_size"),
    ("learner-ranks", "", ["--cluster.num_cpus", "2", "--cluster.learner_cpus", "1",
                           "--learner.num_ranks", "3"], "learner.num_ranks"),
    ("cpu-total", "", ["--cluster.num_cpus", "2"], "cluster.num_cpus"),
    ("negative-num-cpus", "", ["--cluster.num_cpus", "-1"], "cluster.num_cpus"),
    ("rollout-gpus-on-cpu", "", ["--cluster.device", "cpu", "--cluster.rollout_gpus", "1"],
     "cluster.rollout_gpus"),
    ("learner-gpus-on-cpu", "", ["--cluster.device=cpu", "--cluster.learner_gpus=0.5"], "cluster.learner_gpus"),
    ("too-long", "rollout.max_model_len = 700", [], "rollout.max_model_len"),
    ("template-no-prompt", 'data.template = "Question: {question}"', [], "data.template"),
    ("template-two-prompts", 'data.template = "{prompt} {prompt}"', [], "data.template"),
    ("reward-name-space", 'reward.weights = {"not a name" = 1.0}', [], "reward.weights.'not a name'"),
    ("reward-name-no-fn", 'reward.weights = {"pkg.mod:" = 1.0}', [], "reward.weights.pkg.mod:"),
    ("reward-name-digit", 'reward.weights = {"1math" = 1.0}', [], "reward.weights.1math"),
    ("no-rewards", "reward.weights = {}", [], "reward.weights"),
    ("eval-rows-no-eval-path", "", ["--data.synthetic.train_rows", "10"], "data.eval_path"),
    ("override-no-value", "", ["--rollout.group_size"], "rollout.group_size"),
    ("override-no-dot", "", ["--steps", "3"], "steps"),
    ("override-unknown-key", "", ["--rollout.nope", "1"], "rollout.nope"),
    ("override-unknown-section", "", ["--nope.key", "1"], "nope"),
    ("override-unknown-nested", "", ["--model.tiny.nope", "1"], "model.tiny.nope"),
    ("override-below-scalar", "", ["--rollout.group_size.x", "1"], "rollout.group_size.x"),
    ("override-unparseable-int", "", ["--rollout.group_size", "abc"], "rollout.group_size"),
    ("override-unparseable-float", "", ["--rollout.temperature", "0.5.1"], "rollout.temperature"),
    ("override-unparseable-dict", "", ["--reward.weights", "math=1"], "reward.weights"),
    ("override-wrong-type", "", ["--rollout.enforce_eager", "1"], "rollout.enforce_eager"),
    ("override-into-scalar", "model.tiny = 3", ["--model.tiny.seed", "1"], "model.tiny"),
    ("pretrain-no-tiny", "model.pretrain.steps = 5", [], "model.pretrain"),
    ("pretrain-wrong-task", "model.tiny.seed = 0\nmodel.pretrain.steps = 5\ndata.synthetic.eval_rows = 0", [],
     "model.pretrain"),
    ("pretrain-zero-lr", 'model.tiny.seed = 0\nmodel.pretrain.lr = 0.0\ndata.synthetic.task = "chain_sum"\n'
     "data.synthetic.eval_rows = 0", [], "model.pretrain.lr"),
    ("pretrain-worked-fraction", 'model.tiny.seed = 0\ndata.synthetic.task = "chain_sum"\n'
     "data.synthetic.eval_rows = 0", ["--model.pretrain.worked_fraction", "0"], "model.pretrain.worked_fraction"),
    ("chain-sum-terms", 'data.synthetic.task = "chain_sum"\ndata.synthetic.eval_rows = 0\n'
     "data.synthetic.min_terms = 5\ndata.synthetic.max_terms = 4", [], "data.synthetic.max_terms"),
    ("learner-threads", "learner.cpu_threads = -1", [], "learner.cpu_threads"),
    ("max-num-seqs", "rollout.max_num_seqs = -2", [], "rollout.max_num_seqs"),
    ("unknown-task", 'data.synthetic.task = "sudoku"\ndata.synthetic.eval_rows = 0', [], "data.synthetic.task"),
    # Values that passed here and failed later, in vLLM or the loop (issue 11, section 3).
    ("seed-negative", "run.seed = -1", [], "run.seed"),
    ("seed-over-32-bits", "", ["--run.seed", str(2**32)], "run.seed"),
    ("tiny-seed-negative", "model.tiny.seed = -1", [], "model.tiny.seed"),
    ("group-over-vllm-n", "rollout.group_size = 16385", [], "rollout.group_size"),
    ("eval-k-over-vllm-n", "eval.k = [4, 20000]", [], "eval.k"),
    ("temperature-over-vllm", "rollout.temperature = 2.5", [], "rollout.temperature"),
    ("eval-temperature-over-vllm", "eval.temperature = 3.0", [], "eval.temperature"),
    ("empty-stop-string", 'rollout.stop = ["</answer>", ""]', [], "rollout.stop"),
    ("max-num-seqs-over-batch", "rollout.max_num_seqs = 4096", [], "rollout.max_num_seqs"),
    ("overlong-buffer-all", "rollout.max_new_tokens = 64\nreward.overlong_buffer_tokens = 64", [],
     "reward.overlong_buffer_tokens"),
    ("overlong-penalty-negative", "reward.overlong_penalty = -0.5", [], "reward.overlong_penalty"),
    ("reward-memory-negative", "reward.memory_mb = -1", [], "reward.memory_mb"),
    ("staleness-unbounded", "algorithm.max_staleness = 1000000000", [], "algorithm.max_staleness"),
    ("staleness-beyond-steps", "algorithm.max_staleness = 4\nrun.steps = 4", [], "algorithm.max_staleness"),
    ("tiny-kv-heads", "model.tiny.num_kv_heads = 3", [], "model.tiny.num_kv_heads"),
]
BAD_IDS = [case[0] for case in BAD]


@pytest.mark.parametrize("name, extra, overrides, key", BAD, ids=BAD_IDS)
def test_bad_recipe_raises(tmp_path, name, extra, overrides, key):
    err = recipe_error(write_recipe(tmp_path, extra), overrides)
    assert err.key == key
    assert str(err).startswith(f"{key}: ")
    if name.startswith("group-1-"):
        assert name.removeprefix("group-1-") in err.problem  # the message names the estimator


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Run `aha check` for every BAD case at once: each is a ~0.3 s process, mostly start-up."""
    directory = tmp_path_factory.mktemp("cli")
    jobs = {name: [write_recipe(directory, extra, f"{name}.toml"), *overrides]
            for name, extra, overrides, _ in BAD}
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(jobs, pool.map(lambda args: run_check(*args), jobs.values())))


@pytest.mark.parametrize("name, extra, overrides, key", BAD, ids=BAD_IDS)
def test_bad_recipe_cli(cli_results, name, extra, overrides, key):
    line = assert_one_line_error(cli_results[name], f"{key}: ")
    assert line.startswith(f"aha: error: {key}: ")


# Problems with the file itself name no key, so the message names the file instead.
FILE_PROBLEMS = {
    "missing": None,
    "invalid-toml": b"[rollout\ngroup_size = 4\n",
    "duplicate-key": b'[run]\nname = "a"\nname = "b"\n',
    "not-utf8": b'[run]\nname = "caf\xe9"\n',
    "utf16": "[run]\nname = 'x'\n".encode("utf-16"),
    "deeply-nested": b"[rollout]\nstop = " + b"[" * 5000 + b"]" * 5000 + b"\n",
}


@pytest.mark.parametrize("problem", FILE_PROBLEMS)
def test_bad_recipe_file(tmp_path, problem):
    path = tmp_path / f"{problem}.toml"
    if FILE_PROBLEMS[problem] is not None:
        path.write_bytes(FILE_PROBLEMS[problem])
    err = recipe_error(path)
    assert err.key == "" and path.name in str(err)
    assert_one_line_error(run_check(path), path.name)


def test_deeply_nested_override_is_a_recipe_error(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    assert recipe_error(write_recipe(tmp_path), ["--rollout.stop", deep]).key == "rollout.stop"
    assert_one_line_error(run_check(write_recipe(tmp_path), "--rollout.stop", deep), "rollout.stop")


@pytest.mark.parametrize("extra, key_prefix", [
    # A key that is not a plain name is quoted in the error, so a newline in it stays escaped.
    ('rollout."group\\nsize" = 4', "rollout.'group\\n"),
    ('reward.weights = {"bad\\nname" = 1.0}', "reward.weights.'bad\\n"),
    ('reward.weights = {"math\\n" = 1.0}', "reward.weights.'math\\n"),
], ids=["unknown-key", "bad-reward-name", "reward-name-trailing-newline"])
def test_names_with_a_newline_give_one_line_errors(tmp_path, extra, key_prefix):
    path = write_recipe(tmp_path, extra)
    assert recipe_error(path).key.startswith(key_prefix)
    assert_one_line_error(run_check(path), key_prefix)


def test_argument_that_is_not_an_override(tmp_path):
    err = recipe_error(write_recipe(tmp_path), ["stray"])
    assert "stray" in str(err)
    assert_one_line_error(run_check(write_recipe(tmp_path), "--run.name", "x", "stray"), "stray")


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
