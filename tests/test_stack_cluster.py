"""aha on an existing two-node Ray cluster, submitted the way users submit it, and a node lost.

A head is started with `ray start --head` and token authentication (the token lives in this
test's temporary HOME, never the user's), and a second node joins it with `ray start
--address`, both on loopback, with 5 and 3 CPUs. `aha plan` against the running cluster says
the rollout worker, learner rank 0 and the scorer go on the head and learner rank 1 on the
second node (`cluster.learner_placement = "spread"`); `aha submit --follow` runs `aha train` as
a Ray job, whose driver joins the cluster; the run's placement.json shows each bundle placed on
the node the plan named. Then the second node is lost as a whole (its raylet and every process
on it killed) while step 2 samples: the learner group restarts from the last checkpoint with both
ranks on the head, where there is room, and the job finishes with every step once. The cluster
is killed also when the test fails.
"""

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe
from cluster.output.run_log import read_metrics

pytestmark = pytest.mark.stack
RAY = str(Path(sys.executable).with_name("ray"))
AHA = str(Path(sys.executable).with_name("aha"))
REPO = Path(__file__).resolve().parent.parent

# The tiny recipe on the running two-node Ray cluster: one worker, two learner ranks one per node,
# short chain sums, three steps with a checkpoint after each.
RECIPE = {
    "data.eval_path": None, "data.template": "{prompt} <think>", "data.max_prompt_tokens": 32,
    "data.synthetic": {"task": "chain_sum", "train_rows": 32, "eval_rows": 0},
    "rollout.num_workers": 1, "rollout.prompts_per_step": 2, "rollout.max_new_tokens": 8, "rollout.max_model_len": 64,
    "rollout.kv_cache_gb": 0.1,
    "reward.weights": {"arithmetic": 1.0},
    "algorithm": None,
    "learner": {"num_ranks": 2, "micro_batch_size": 8},
    "cluster.num_cpus": None, "cluster.address": "auto", "cluster.rollout_cpus": 2, "cluster.learner_placement": "spread",
    "eval": None,
    "run.steps": 3, "run.checkpoint_every": 1,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_nodes(tmp_path):
    """A token-protected Ray head (5 CPUs) and a second node (3 CPUs) on free ports; both killed
    with their process groups after, whatever the test did. Yields the env, the job server's
    URL, the GCS address and the second node's `ray start` process."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port, dashboard, head_agent, node_agent = _free_port(), _free_port(), _free_port(), _free_port()
    # A short session directory: Ray's unix sockets live in it, and pytest's tmp_path can be too
    # long for a socket path (108 bytes).
    ray_dir = tempfile.mkdtemp(prefix="aha-ray-", dir="/tmp")
    started = []
    try:
        started.append(subprocess.Popen(
            [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=5", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={ray_dir}",
             # Each node's job agent gets a port of its own: Ray's default (52365) is taken while a
             # test file beside this one runs a Ray of its own, and the job server of a head whose
             # agent could not bind it answers every submission "No available agent".
             f"--dashboard-agent-listen-port={head_agent}",
             "--disable-usage-stats"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        jobs_url = f"http://127.0.0.1:{dashboard}"
        _wait_until(lambda: subprocess.run([RAY, "job", "list", "--address", jobs_url], env=env,
                                           capture_output=True, timeout=60).returncode == 0,
                    started[0], "the Ray head's job server")
        started.append(subprocess.Popen(
            [RAY, "start", "--block", f"--address=127.0.0.1:{port}", "--num-cpus=3", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={node_agent}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_until(lambda: _alive_nodes(env, port) == 2, started[1], "the second node")
        yield env, jobs_url, f"127.0.0.1:{port}", started[1]
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        _kill_processes_mentioning(ray_dir)  # Ray daemons that left the processes' groups
        shutil.rmtree(ray_dir, ignore_errors=True)


def _wait_until(condition, process, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"{what}: ray start exited"
        assert time.monotonic() < deadline, f"{what} did not come up within {timeout_s:g} s"
        time.sleep(2)


def _alive_nodes(env, port) -> int:
    done = subprocess.run([RAY, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                          timeout=60)
    return done.stdout.count("node_") if done.returncode == 0 else 0


def _kill_processes_mentioning(text: str, timeout_s: float = 30.0) -> None:
    """SIGKILL every process whose command line contains `text`, until none is left."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = []
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
        if not found or time.monotonic() > deadline:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def _lose_node(node_process) -> list[str]:
    """SIGKILL a node's `ray start` process and everything under it (its raylet, its workers):
    the node is gone as when its machine is; the names of what was killed."""
    import psutil

    processes = [psutil.Process(node_process.pid), *psutil.Process(node_process.pid).children(recursive=True)]
    names = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(process.name())
            process.kill()
    return names


def test_aha_submit_to_a_two_node_cluster_places_actors_as_planned_and_survives_losing_a_node(tmp_path, two_nodes):
    env, jobs_url, gcs, second_node = two_nodes
    # Without the token the cluster's job API refuses the client.
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    refused = subprocess.run([RAY, "job", "list", "--address", jobs_url], env=no_token,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0

    # aha submit ships the repository, so the recipe goes inside it for the test's length (not in
    # a git-ignored folder: Ray's packaging leaves out what .gitignore lists).
    recipe = REPO / ".aha-test-recipes" / f"{tmp_path.name}.toml"
    write_tiny_recipe(recipe, RECIPE, root=tmp_path)
    run = tmp_path / "run"
    try:
        planned = subprocess.run([AHA, "plan", str(recipe), "--cluster.address", gcs], env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=180)
        assert planned.returncode == 0, planned.stdout[-2000:] + planned.stderr[-2000:]
        assert "node 0: rollout 0; learner 0; scorer 0 (free: 0 GPUs, 1.5 CPUs)" in planned.stdout, planned.stdout
        assert "node 1: learner 1 (free: 0 GPUs, 2 CPUs)" in planned.stdout, planned.stdout
        # Without the token aha submit is refused too, in one line, and nothing is submitted.
        tokenless = subprocess.run([AHA, "submit", str(recipe), "--address", jobs_url, "--python", sys.executable],
                                   env=no_token, cwd=REPO, capture_output=True, text=True, timeout=180)
        assert tokenless.returncode != 0 and tokenless.stderr.count("\n") == 1, tokenless.stderr[-3000:]
        assert tokenless.stderr.startswith("aha: error: "), tokenless.stderr
        # The head's job agent registers a little after its job server answers; aha submit waits for it.
        job = subprocess.Popen(
            [AHA, "submit", str(recipe), "--address", jobs_url, "--python", sys.executable, "--follow",
             "--timeout", "900", "--submission-id", "aha-test-job"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = run / "checkpoints" / "version-1" / "driver-state.json"
            deadline = time.monotonic() + 900
            while not first.is_file() and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert first.is_file(), job.communicate(timeout=60) if job.poll() is not None else "timed out"
            placement = json.loads((run / "placement.json").read_text())
            lost = _lose_node(second_node)  # as step 2 samples
            assert "raylet" in lost, lost
            stdout, stderr = job.communicate(timeout=900)
        finally:
            if job.poll() is None:
                job.kill()
    finally:
        recipe.unlink()
        with contextlib.suppress(OSError):
            recipe.parent.rmdir()
    logs = stdout[-5000:] + stderr[-3000:]
    assert job.returncode == 0, logs
    assert "[aha] submitted job aha-test-job" in stdout and "[aha] job aha-test-job: SUCCEEDED" in logs
    head, second = (node["id"] for node in placement["nodes"])
    assert placement["planned"] == {"rollout": [head], "learner": [head, second], "scorer": [head]}
    assert placement["placed"] == placement["planned"]  # every bundle sat where the plan said
    # The lost node's rank took the learner group down with it; it restarted on the head.
    assert f"[aha] node {second[:12]} is lost: the learner ranks are placed anew" in stdout, logs
    assert "[aha] learner group restarted from version-" in stdout, logs
    assert "[aha] done" in stdout, logs
    assert json.loads((run / "placement.json").read_text())["placed"]["learner"] == [head, head]
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["restarts/learner"] == 1 and metrics[-1]["learner/weight_version"] == 3
    assert (run / "checkpoints" / "version-3" / "driver-state.json").is_file()  # complete
