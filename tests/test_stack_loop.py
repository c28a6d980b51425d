"""The real loop end to end on CPU: vLLM rollout workers, reward scorers and DeepSpeed ranks
as Ray actors, a few steps of the tiny recipe (cluster/inputs/tiny_recipe.py)."""

import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe
from cluster.output.run_log import read_metrics
from cluster.wire.errors import RunFailed
from stack_helpers import AHA, consumed, sampler_order, train, train_rows, wait_for

pytestmark = pytest.mark.stack


def test_a_few_on_policy_steps_leave_everything_behind(tmp_path):
    # Start where a run was killed before its first checkpoint: a fresh start replaces its
    # outputs (it has no checkpoint to lose) and leaves the user's own file alone.
    stuck = tmp_path / "run"
    (stuck / "rollouts").mkdir(parents=True)
    (stuck / ".aha-run").write_text("{}")
    (stuck / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5}\n{"step": 2, "rew')
    (stuck / "rollouts" / "step-000001.parquet").write_bytes(b"old")
    (stuck / "notes.txt").write_text("mine")
    recipe = write_tiny_recipe(tmp_path / "recipe.toml")
    first = subprocess.Popen([AHA, "train", str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=tmp_path)
    wait_for(lambda: "pid" in _read(stuck / ".aha-lock"), first)
    # A second run into the same directory meanwhile is refused in one line naming the holder.
    second = subprocess.run([AHA, "train", str(recipe)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"is in use by another aha run (pid {first.pid} on " in second.stderr
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stdout[-2000:] + stderr[-4000:]
    run, done = stuck, subprocess.CompletedProcess(first.args, 0, stdout, stderr)
    # The ranks do not build DeepSpeed's CPU inference all-reduce, which training never uses.
    assert "shm_comm_op built" not in stdout + stderr
    assert (run / "notes.txt").read_text() == "mine"
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
    # The first step says where the time before it went (what bench/loop.py prints), the
    # learner's set-up by its parts; the later steps do not repeat it.
    startup = {k.removeprefix("startup/"): v for k, v in metrics[0].items() if k.startswith("startup/")}
    assert {"inputs", "inputs_wait", "ray", "learner", "engines", "weight_link",
            "first_evaluation_beside_step_1", "to_first_step"} <= set(startup), startup
    assert all(seconds >= 0 for seconds in startup.values())
    parts = {k.removeprefix("startup_learner/"): v for k, v in metrics[0].items() if k.startswith("startup_learner/")}
    assert set(parts) == {"actor_start", "imports", "process_group", "model", "deepspeed", "reference"}, parts
    assert 0 < sum(parts.values()) <= startup["learner"] + 0.5  # its parts, within the phase they make up
    # The evaluation before RL runs beside step 1 (logged as step 0, before it): not before it.
    assert startup["to_first_step"] >= startup["learner"] and startup["first_evaluation_beside_step_1"] > 0
    assert not any(k.startswith(("startup/", "startup_learner/")) for m in metrics[1:] for k in m)
    table = pq.read_table(run / "rollouts" / "step-000002.parquet").to_pylist()
    assert len(table) == 16 and {r["step"] for r in table} == {2}
    assert {r["weight_version"] for r in table} == {1}  # on-policy: made by the weights of step 1
    assert all(isinstance(r["completion"], str) for r in table)
    assert consumed(run) == sampler_order(tmp_path, 3)
    # checkpoint_every = 2 and the end: versions 2 and 3, each complete (its driver state last).
    assert sorted(p.name for p in (run / "checkpoints").glob("version-*")) == ["version-2", "version-3"]
    assert json.loads((run / "checkpoints" / "version-3" / "driver-state.json").read_text())["step"] == 3
    assert sorted(p.name for p in (run / "plots").glob("*.png"))
    assert list((run / "tb").glob("events.out.tfevents.*"))  # TensorBoard, as the README says
    assert json.loads((run / "recipe.json").read_text())["rollout"]["group_size"] == 4
    assert "[aha] done" in done.stdout
    _check_final_and_exports(run, tmp_path)


def _check_final_and_exports(run, tmp_path):
    """final/ is the learner's last weights as a model directory, and `aha export` turns any kept
    checkpoint into one. (That vLLM and transformers read such a directory alike, to the same
    logprobs: tests/test_stack_pipeline.py, whose second stage starts from the first's final/.)"""
    import torch
    from safetensors.torch import load_file

    final = run / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "aha_export.json"):
        assert (final / name).is_file(), name
    assert json.loads((final / "aha_export.json").read_text())["weight_version"] == 3
    mid = tmp_path / "step2"
    for out, extra in ((mid, ["--step", "2"]), (tmp_path / "newest", [])):
        done = subprocess.run([AHA, "export", str(run), str(out), *extra], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    # The newest checkpoint is step 3: the very weights of final/.
    newest, last = load_file(tmp_path / "newest" / "model.safetensors"), load_file(final / "model.safetensors")
    assert newest.keys() == last.keys() and all(torch.equal(newest[k], last[k]) for k in last)
    assert any(not torch.equal(load_file(mid / "model.safetensors")[k], last[k]) for k in last)  # step 2 differs
    refused = subprocess.run([AHA, "export", str(run), str(tmp_path / "none"), "--step", "1"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "keeps no checkpoint of step 1 (kept steps: 2, 3)" in refused.stderr


# A user reward that returns NaN for about three completions in four (by a checksum of the
# text, so which ones is up to the sampled text): the run goes on, and every failure is seen.
# It also leaves a detached child behind in each reward worker (a new session, double-forked,
# its pid noted in AHA_TEST_CHILDREN): the run must end those too.
NAN_REWARD = """
import os

_forked = False


def score(completion, **fields):
    global _forked
    if not _forked:
        _forked = True
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open(os.environ["AHA_TEST_CHILDREN"], "a") as out:
                    out.write(f"{os.getpid()}\\n")
                os.execvp("sleep", ["sleep", "300"])
            os._exit(0)
        os.wait()
    return float("nan") if sum(map(ord, completion)) % 4 else 1.0
"""
NAN_NAME = "nan_reward:score"


@pytest.fixture(scope="module")
def async_run_with_a_nan_reward(tmp_path_factory):
    """One async run (max_staleness 1) scored by the NaN reward: the two tests below check
    independent things of it, and each whole run costs ~45 s of start-up on CPU."""
    tmp_path = tmp_path_factory.mktemp("async-nan")
    env = {**_user_reward_env(tmp_path, "nan_reward", NAN_REWARD), "AHA_TEST_CHILDREN": str(tmp_path / "children")}
    return train(tmp_path, "--algorithm.max_staleness", "1", "--reward.weights",
                  f"{{'{NAN_NAME}' = 1.0, format = 0.5}}", "--reward.failure_reward", "-1.0",
                  "--data.eval_path", "", "--data.synthetic.eval_rows", "0", env=env)


def test_async_mode_never_trains_on_samples_staler_than_allowed(async_run_with_a_nan_reward):
    run, _ = async_run_with_a_nan_reward
    metrics = read_metrics(run)  # no evaluation in this run, so no step 0
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


def test_what_a_reward_left_behind_ends_with_the_run(async_run_with_a_nan_reward):
    import psutil

    run, _ = async_run_with_a_nan_reward
    children = [int(pid) for pid in (run.parent / "children").read_text().split()]
    assert children  # each reward worker did leave a detached `sleep 300`
    left = []
    for pid in children:
        try:
            if psutil.Process(pid).cmdline() == ["sleep", "300"]:
                left.append(pid)
        except psutil.Error:
            continue
    assert left == [], f"the reward's detached children {left} outlived the run"


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
    env = _user_reward_env(tmp_path, "half_flat", HALF_FLAT_REWARD)
    run, done = train(tmp_path, "--algorithm.dynamic_sampling", "true", "--reward.weights", "{'half_flat:score' = 1.0}",
                       "--data.eval_path", "", "--data.synthetic.eval_rows", "0", "--rollout.sleep_between_steps", "true",
                       "--run.log_every", "2", env=env)
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    answers = {row.index: int(row.fields["answer"]) for row in train_rows(tmp_path)}
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


def _user_reward_env(directory, module: str, text: str) -> dict:
    """Write a user's reward module `module`.py into `directory`; returns the environment in
    which the scorer's worker processes can import it."""
    import os

    (directory / f"{module}.py").write_text(text)
    return {**os.environ, "PYTHONPATH": str(directory)}


def _read(path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_a_fresh_run_refuses_an_output_directory_it_did_not_make(tmp_path):
    # Writing there would mix a run's files with the user's: nothing is touched, and the user
    # is told to pick another directory.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5}\n')
    recipe = write_tiny_recipe(tmp_path / "recipe.toml")
    done = subprocess.run([AHA, "train", str(recipe)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"aha: error: run.output_dir: '{tmp_path / 'run'}' is not empty and was not made by aha; aha writes only "
        "into a directory it made or an empty one: choose another run.output_dir"]
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1, "reward_mean": 0.5}\n'
    assert not (tmp_path / "model").exists() and not (tmp_path / "data").exists()


def test_a_reward_returning_nan_is_a_counted_explained_failure_not_a_crash(async_run_with_a_nan_reward):
    run, done = async_run_with_a_nan_reward
    name = NAN_NAME
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    warned = []
    for m in metrics:
        rows = pq.read_table(run / "rollouts" / f"step-{m['step']:06d}.parquet").to_pylist()
        failed = [r for r in rows if r[f"reward_failure/{name}"]]
        assert all(r[f"reward_failure/{name}"] == "returned nan, not a finite number" for r in failed)
        assert all(r[f"reward/{name}"] == -1.0 for r in failed)  # reward.failure_reward, not NaN
        assert all(r[f"reward/{name}"] == 1.0 for r in rows if r not in failed)
        assert {r["reward_failure/format"] for r in rows} == {""}
        assert m[f"reward_failures/{name}"] == len(failed) / 16 and m["reward_failures/format"] == 0.0
        line = f"[aha] warning: step {m['step']}: reward '{name}' failed for {len(failed)} of 16 completions: " \
               "returned nan, not a finite number"
        assert (line in done.stdout) == (len(failed) > 8), (len(failed), done.stdout[-2000:])
        warned.append(len(failed) > 8)
        assert m["reward_mean"] is not None and m["learner/skipped_updates"] == 0
    assert any(warned)  # at three failures in four expected, a step without "most" is the rare one
    assert 0 < sum(m[f"reward_failures/{name}"] for m in metrics) < 3  # some failed, not all


def test_weights_that_overflow_end_the_run_in_one_line_and_leave_no_checkpoint(tmp_path):
    # The case: `--learner.lr 1e308` used to save a NaN checkpoint and exit 0.
    recipe = write_tiny_recipe(tmp_path / "recipe.toml")
    done = subprocess.run([AHA, "train", str(recipe), "--learner.lr", "1e308", "--run.checkpoint_every", "1",
                           "--data.eval_path", "", "--data.synthetic.eval_rows", "0"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-4000:]
    assert [line for line in done.stderr.splitlines() if line.startswith("aha: ")] == [
        "aha: error: step 1: the weights are not finite after the optimizer step (learner.lr = 1e+308); "
        "stopped before they were saved or sent to the rollout workers; lower learner.lr"]
    # No traceback: neither the driver's nor Ray's report of the other rank's error as "unhandled".
    assert "Traceback" not in done.stderr and "Unhandled error" not in done.stderr, done.stderr[-4000:]
    assert not list((tmp_path / "run" / "checkpoints").rglob("*.pt"))  # no state of any rank was saved
    assert read_metrics(tmp_path / "run") == []  # the step that overflowed was not logged either


def test_a_mistake_found_while_ray_starts_is_raised_and_that_ray_is_shut_down(monkeypatch):
    # The drivers load their tokenizer and check their prompts in a thread while Ray starts
    # (cluster/roles/system.py): the inputs' own error wins and leaves no Ray behind, nor its lines.
    import io
    import logging
    import threading
    import time

    import ray

    from cluster.recipe import RecipeError, load_recipe
    from cluster.startup.ray import prepare_while_ray_starts

    recipe = load_recipe(Path(__file__).parents[1] / "deploy/recipes/arith-zero-cpu.toml")  # a local Ray
    assert not ray.is_initialized()

    def bad_inputs():
        time.sleep(1.0)  # still preparing when Ray is up
        raise RecipeError("data.template", "the mistake")

    # What Ray's start logs, as its own stderr handler would get it (that handler writes to
    # whatever stream was sys.stderr when ray was first imported, which pytest may have swapped).
    ray_lines = io.StringIO()
    handler = logging.StreamHandler(ray_lines)
    logging.getLogger("ray").addHandler(handler)
    try:
        with pytest.raises(RecipeError, match="the mistake"):
            prepare_while_ray_starts(recipe, bad_inputs)
        assert not ray.is_initialized()
        assert ray_lines.getvalue() == ""  # the mistake's line is the only one the user sees

        # No cluster.address means a Ray of the run's own, even where RAY_ADDRESS names another
        # (here nothing listens: joining it would fail).
        monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
        prepared, ray_s = prepare_while_ray_starts(recipe, lambda: "inputs")
        try:
            assert prepared == "inputs" and ray_s > 0 and ray.is_initialized()
            assert "Started a local Ray instance" in ray_lines.getvalue()  # held back, then shown
        finally:
            ray.shutdown()

        # Inputs that never finish loading are an error once cluster.timeout_s has passed, not a hang.
        impatient = load_recipe(Path(__file__).parents[1] / "deploy/recipes/arith-zero-cpu.toml",
                                ["--cluster.timeout_s", "1"])
        release = threading.Event()
        try:
            with pytest.raises(RunFailed, match=r"^loading the inputs .* took over cluster.timeout_s = 1 s"):
                prepare_while_ray_starts(impatient, release.wait)
            assert not ray.is_initialized()
        finally:
            release.set()
    finally:
        logging.getLogger("ray").removeHandler(handler)


def test_the_roles_start_beside_the_inputs_and_are_shut_down_when_the_inputs_fail():
    # `aha train` starts its roles as soon as Ray is up, while the tokenizer loads and the prompts
    # are checked (cluster/startup/ray.py): a mistake found after they started still wins, and what
    # started is shut down with the Ray it started on.
    import time

    import ray

    from cluster.recipe import RecipeError, load_recipe
    from cluster.startup.ray import prepare_while_roles_start

    recipe = load_recipe(Path(__file__).parents[1] / "deploy/recipes/arith-zero-cpu.toml")  # a local Ray
    assert not ray.is_initialized()

    class Roles:  # a real actor standing for the roles start_system starts
        started: list = []

        def __init__(self):
            @ray.remote(num_cpus=0.1)
            class Role:
                def ping(self) -> int:
                    return 1

            self.actor, self.shut_down = Role.remote(), False
            ray.get(self.actor.ping.remote(), timeout=120)
            Roles.started.append(self)

        def shutdown(self) -> None:
            self.shut_down = True
            ray.kill(self.actor)

    def failing_once_the_roles_are_up():
        deadline = time.monotonic() + 120
        while not Roles.started and time.monotonic() < deadline:
            time.sleep(0.05)
        raise RecipeError("data.template", "the mistake")

    with pytest.raises(RecipeError, match="the mistake"):
        prepare_while_roles_start(recipe, failing_once_the_roles_are_up, Roles)
    assert len(Roles.started) == 1 and Roles.started[0].shut_down and not ray.is_initialized()

    def failing_at_once():
        raise RecipeError("data.template", "the mistake")

    with pytest.raises(RecipeError, match="the mistake"):
        prepare_while_roles_start(recipe, failing_at_once, Roles)
    assert len(Roles.started) == 1 and not ray.is_initialized()  # nothing started for inputs known bad

    prepared, ray_s, roles = prepare_while_roles_start(recipe, lambda: "inputs", Roles)
    try:
        assert prepared == "inputs" and ray_s > 0 and roles is Roles.started[-1] and not roles.shut_down
    finally:
        ray.shutdown()
