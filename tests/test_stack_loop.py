"""The real loop end to end on CPU: vLLM rollout workers, reward scorers and DeepSpeed ranks
as Ray actors, a few steps with the tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.run_log import read_metrics

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


def _train(tmp_path, *overrides, timeout=600):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(out=tmp_path))
    done = subprocess.run([AHA, "train", str(recipe), *overrides], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)
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


def _sampler_order(tmp_path, steps: int) -> dict[int, list[int]]:
    """What an uninterrupted on-policy run consumes: the seeded sampler's batches, in order."""
    from cluster.data import PromptSampler, load_prompt_rows

    sampler = PromptSampler(load_prompt_rows(tmp_path / "data" / "train.parquet"), seed=0, shuffle=True)
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
