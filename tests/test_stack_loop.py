"""The real loop end to end on CPU: vLLM rollout workers, reward scorers and DeepSpeed ranks
as Ray actors, a few steps with the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.output.run_log import read_metrics

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))

RECIPE = """
[model]
path = "{out}/model"
[model.tiny]
hidden_size = 128
num_layers = 2
[data]
train_path = "{out}/data/train.parquet"
eval_path = "{out}/data/eval.parquet"
template = "r1_zero"
max_prompt_tokens = 400
[data.synthetic]
task = "arithmetic"
train_rows = 64
eval_rows = 16
[rollout]
group_size = 4
prompts_per_step = 4
max_new_tokens = 12
max_model_len = 512
kv_cache_gb = 0.2
enforce_eager = true
[reward]
weights = {{ arithmetic = 1.0, format = 0.5 }}
workers_per_scorer = 1
[algorithm]
# A random tiny model earns no reward, so every advantage is 0; the entropy bonus still moves
# the weights each step, which is what the weight-sync and staleness checks need.
entropy_coef = 0.01
[learner]
num_ranks = 2
zero_stage = 2
lr = 1e-4
micro_batch_size = 4
[cluster]
num_cpus = 4
rollout_cpus = 1
learner_cpus = 1
scorer_cpus = 0.5
timeout_s = 300
[eval]
num_prompts = 8
k = [2]
budgets = [4]
[run]
output_dir = "{out}/run"
steps = 3
checkpoint_every = 2
"""


def _train(tmp_path, *overrides, timeout=600, env=None):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(out=tmp_path))
    done = subprocess.run([AHA, "train", str(recipe), *overrides], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return tmp_path / "run", done


def test_a_few_on_policy_steps_leave_everything_behind(tmp_path):
    run, done = _train(tmp_path)
    before, *metrics = read_metrics(run)
    assert before["step"] == 0 and [m["step"] for m in metrics] == [1, 2, 3]
    for key in ("eval/accuracy", "eval/pass@2", "eval/maj@2", "eval/acc@budget=4"):
        assert 0.0 <= before[key] <= 1.0, key
    assert before["eval/num_prompts"] == 8 and "eval/accuracy" in metrics[-1]
    for m in metrics:
        assert m["learner/weight_version"] == m["step"]
        assert m["staleness_max"] == 0
        # The engine sampled with exactly the learner's weights (synced after every step): the
        # learner's logprobs of the sampled tokens equal the engine's, to fp32 noise.
        assert m["learner/rollout_logprob_gap_max"] < 1e-3, m["learner/rollout_logprob_gap_max"]
        assert m["learner/grad_norm"] > 0  # and those weights did change at every step
        for key in ("reward_mean", "accuracy", "reward/arithmetic", "reward/format", "response_length_mean",
                    "reflection_rate", "learner/grad_norm", "learner/lr", "time/generate", "time/sync", "time/idle",
                    "learner_idle_share", "rollout_tokens_per_s", "learner_tokens_per_s", "truncated_fraction",
                    "learner/clip_frac_low", "learner/entropy", "learner/tis_weight_mean", "dropped_flat_groups"):
            assert key in m, key
    table = pq.read_table(run / "rollouts" / "step-000002.parquet").to_pylist()
    assert len(table) == 16 and {r["step"] for r in table} == {2}
    assert {r["weight_version"] for r in table} == {1}  # on-policy: made by the weights of step 1
    assert all(isinstance(r["completion"], str) for r in table)
    assert _consumed(run) == _sampler_order(tmp_path, 3)
    assert (run / "checkpoints" / "driver-state.json").is_file()
    assert json.loads((run / "checkpoints" / "driver-state.json").read_text())["step"] == 3
    assert sorted(p.name for p in (run / "plots").glob("*.png"))
    assert list((run / "tb").glob("events.out.tfevents.*"))  # TensorBoard, as the README says
    assert json.loads((run / "recipe.json").read_text())["rollout"]["group_size"] == 4
    assert "[aha] done" in done.stdout


def test_async_mode_never_trains_on_samples_staler_than_allowed(tmp_path):
    run, _ = _train(tmp_path, "--algorithm.max_staleness", "1")
    metrics = read_metrics(run)[1:]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["staleness_max"] <= 1 for m in metrics)
    assert max(m["staleness_max"] for m in metrics) == 1  # it did run ahead of the learner
    # Samples one version old really came from older weights: the learner's logprobs differ.
    print("rollout_logprob_gap_max by step:", [(m["step"], m["staleness_max"], m["learner/rollout_logprob_gap_max"])
                                               for m in metrics])
    assert max(m["learner/rollout_logprob_gap_max"] for m in metrics if m["staleness_max"] == 1) > 1e-4
    for step in (1, 2, 3):
        rows = pq.read_table(run / "rollouts" / f"step-{step:06d}.parquet").to_pylist()
        assert all(step - 1 - r["weight_version"] <= 1 for r in rows)


# A reward that makes every group of an even-answer row flat (all four completions get 0.5) and
# gives the others rewards that vary with the text: with dynamic sampling, exactly the
# even-answer groups must be dropped and replaced by fresh prompts.
HALF_FLAT_REWARD = """
def score(completion, answer, **fields):
    if int(answer) % 2 == 0:
        return 0.5
    return (sum(map(ord, completion)) % 7) / 7
"""


def test_dynamic_sampling_drops_flat_groups_and_refills_the_step(tmp_path):
    import os

    (tmp_path / "half_flat.py").write_text(HALF_FLAT_REWARD)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # the scorer's workers import the user's reward
    run, done = _train(tmp_path, "--algorithm.dynamic_sampling", "true", "--reward.weights", "{'half_flat:score' = 1.0}",
                       "--data.eval_path", "", "--data.synthetic.eval_rows", "0", "--rollout.sleep_between_steps", "true",
                       "--run.log_every", "2", env=env)
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    answers = {row.index: int(row.fields["answer"]) for row in _train_rows(tmp_path)}
    for step in (1, 2, 3):
        rows = pq.read_table(run / "rollouts" / f"step-{step:06d}.parquet").to_pylist()
        groups = {r["prompt_index"] for r in rows}
        assert len(rows) == 16 and len(groups) == 4  # a full step: 4 distinct groups of 4
        assert all(answers[index] % 2 == 1 for index in groups)  # no flat group was trained on
        assert all(r["weight_version"] == step - 1 for r in rows)  # the refills too are on-policy
    # The sampler's first draws hold even-answer rows, so groups were dropped and replaced.
    assert sum(m["dropped_flat_groups"] for m in metrics) >= 1
    assert all(m["dropped_stale_groups"] == 0 and m["zero_adv_group_fraction"] == 0.0 for m in metrics)
    # run.log_every = 2: a step line for step 2 and the last step, none for step 1.
    assert "[aha] step 2/3" in done.stdout and "[aha] step 3/3" in done.stdout
    assert "[aha] step 1/3" not in done.stdout


def _train_rows(tmp_path):
    from cluster.inputs.data import load_prompt_rows

    return load_prompt_rows(tmp_path / "data" / "train.parquet")


def _sampler_order(tmp_path, steps: int) -> dict[int, list[int]]:
    """What an uninterrupted on-policy run consumes: the seeded sampler's batches, in order."""
    from cluster.inputs.data import PromptSampler

    sampler = PromptSampler(_train_rows(tmp_path), seed=0, shuffle=True)
    return {step: sorted(row.index for row in sampler.next_batch(4)) for step in range(1, steps + 1)}


def _consumed(run) -> dict[int, list[int]]:
    """Prompt indices trained on, per step, from the run's rollout files."""
    rows = pq.read_table(run / "rollouts").to_pylist()
    steps: dict[int, set[int]] = {}
    for row in rows:
        steps.setdefault(row["step"], set()).add(row["prompt_index"])
    return {step: sorted(indices) for step, indices in sorted(steps.items())}


def test_sigkill_and_resume_consume_the_same_prompts_as_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import time

    interrupted_dir = tmp_path / "b"
    interrupted_dir.mkdir()
    recipe = interrupted_dir / "recipe.toml"
    recipe.write_text(RECIPE.format(out=interrupted_dir))
    run = interrupted_dir / "run"
    # Kill the whole process tree (driver, Ray, engines) right after step 1's checkpoint.
    process = subprocess.Popen([AHA, "train", str(recipe), "--run.checkpoint_every", "1"], cwd=interrupted_dir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = run / "checkpoints" / "driver-state.json"
    deadline = time.monotonic() + 600
    while not state.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state.is_file(), "the run never checkpointed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(3)  # let Ray's orphaned daemons notice their driver is gone
    assert json.loads(state.read_text())["step"] == 1

    resumed, done = _train(interrupted_dir, "--run.checkpoint_every", "1", "--resume")
    assert [m["step"] for m in read_metrics(resumed)] == [0, 1, 2, 3]
    # The uninterrupted run consumes exactly the sampler's order (asserted in the on-policy
    # test); the killed-and-resumed run must too.
    assert _consumed(resumed) == _sampler_order(interrupted_dir, 3)
    assert json.loads(state.read_text())["weight_version"] == 3


def test_a_fresh_run_refuses_an_output_directory_that_holds_a_run(tmp_path):
    # Starting over would append a second run's steps to the first one's metrics; nothing is
    # touched and the user is told to resume or pick another directory.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5}\n')
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(out=tmp_path))
    done = subprocess.run([AHA, "train", str(recipe)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"aha: error: run.output_dir: '{tmp_path / 'run'}' already holds a run; pass --resume to continue it, "
        "or choose another run.output_dir"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1, "reward_mean": 0.5}\n'
    assert not (tmp_path / "model").exists() and not (tmp_path / "data").exists()
