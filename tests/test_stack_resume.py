"""A long run interrupted both ways a long job is, on the real stack: SIGKILL of the driver (it
takes every process it started with it) and SIGTERM (a scheduler's pre-emption), resumed after each from its newest complete checkpoint,
consuming exactly the prompts an uninterrupted run would. (A learner rank lost mid-run:
tests/test_stack_chaos.py.)"""

import json
import os
import shutil
import signal
import subprocess
import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe
from cluster.output.run_log import read_metrics
from stack_helpers import AHA, consumed, process_tree, sampler_order, still_running, train, wait_for

pytestmark = pytest.mark.stack


def test_a_run_killed_then_stopped_resumes_each_time_and_consumes_the_same_prompts_as_an_uninterrupted_run(
        tmp_path):
    # One run through both interruptions: one system start fewer than a test per way.
    recipe = write_tiny_recipe(tmp_path / "recipe.toml")
    run = tmp_path / "run"
    settings = ["--run.steps", "5", "--run.checkpoint_every", "1", "--run.keep_checkpoints", "2"]
    # Kill the driver alone with -9 as step 2 starts, right after step 1's checkpoint: within 30 s
    # nothing it started is left (Ray's processes and agents, engines, learner ranks, scorers).
    process = subprocess.Popen([AHA, "train", str(recipe), *settings], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "checkpoints" / "version-1" / "driver-state.json"
    wait_for(state.is_file, process, timeout=600)
    started = process_tree(process.pid)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    names = set(started.values())
    assert {"raylet", "gcs_server"} <= names and any(name.startswith("ray::") for name in names), names
    assert still_running(started, within=30) == [], f"of {sorted(names)}"
    assert json.loads(state.read_text())["step"] == 1
    # As if it had been killed one checkpoint later, between the learner's save and the driver
    # state: an incomplete version-2, and DeepSpeed's `latest` pointing at it.
    shutil.copytree(run / "checkpoints" / "version-1", run / "checkpoints" / "version-2",
                    ignore=shutil.ignore_patterns("driver-state.json"))
    (run / "checkpoints" / "latest").write_text("version-2")

    # Mistakes on resume are one line each, before anything starts, and change nothing.
    def refused(*overrides) -> str:
        done = subprocess.run([AHA, "train", str(recipe), *settings, *overrides, "--resume"], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-3000:]
        return done.stderr
    assert "rollout.group_size (4 -> 2), run.seed (0 -> 4) may not change on resume" in refused(
        "--rollout.group_size", "2", "--run.seed", "4")
    saved_state = state.read_text()
    state.write_text(saved_state[:15])  # a torn driver state
    assert f"'{state}' is damaged" in refused()
    state.write_text(saved_state)

    # Resumed; then what a scheduler does before it pre-empts: SIGTERM to the driver, once the
    # resumed run has checkpointed a step of its own (the version-2 it writes, unlike the fake one,
    # has a driver state).
    process = subprocess.Popen([AHA, "train", str(recipe), *settings, "--resume"], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for((run / "checkpoints" / "version-2" / "driver-state.json").is_file, process, timeout=600)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert "resuming from version-1 (step 1); dropped the incomplete version-2" in stdout
    stopped_at = read_metrics(run)[-1]["step"]
    assert 2 <= stopped_at < 5
    assert (f"[aha] stopped after step {stopped_at} of 5 (SIGTERM), checkpoint written; resume with: aha train "
            f"{recipe} {' '.join(settings)} --resume") in stdout
    stopped_state = json.loads((run / "checkpoints" / f"version-{stopped_at}" / "driver-state.json").read_text())
    assert stopped_state["step"] == stopped_at and not (run / "final").exists()

    resumed, done = train(tmp_path, *settings, "--resume")
    assert f"resuming from version-{stopped_at} (step {stopped_at})" in done.stdout
    assert [m["step"] for m in read_metrics(resumed)] == [0, 1, 2, 3, 4, 5]
    # The uninterrupted run consumes exactly the sampler's order (asserted in the on-policy
    # test); the killed, stopped and twice resumed run must too: nothing lost, nothing twice.
    assert consumed(resumed) == sampler_order(tmp_path, 5)
    assert sorted(p.name for p in (run / "checkpoints").glob("version-*")) == ["version-4", "version-5"]
    assert json.loads((run / "checkpoints" / "version-5" / "driver-state.json").read_text())["weight_version"] == 5
    assert (resumed / "final" / "config.json").is_file()
