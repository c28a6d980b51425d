"""Recipes that are refused: every mistake one line naming its key (or the file), from
`load_recipe` and from `aha check` alike (cluster.recipe.checks)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from recipe_helpers import assert_one_line_error, recipe_error, run_check, write_recipe

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
    ("budget-zero-unforced", "eval.budgets = [0, 8]", [], "eval.budgets"),
    ("pair-sum-numbers", 'data.synthetic.task = "pair_sum"\ndata.synthetic.eval_rows = 0', ["--data.synthetic.num_numbers", "7"],
     "data.synthetic.num_numbers"),
    ("pair-sum-max-number", 'data.synthetic.task = "pair_sum"\ndata.synthetic.eval_rows = 0\ndata.synthetic.max_number = 4',
     [], "data.synthetic.max_number"),
    ("countdown-numbers", 'data.synthetic.task = "countdown"\ndata.synthetic.eval_rows = 0\ndata.synthetic.num_numbers = 1',
     [], "data.synthetic.num_numbers"),
    ("forcing-without-think-end", 'eval.force_answer = "</think><answer>"\neval.think_end = ""', [], "eval.think_end"),
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
