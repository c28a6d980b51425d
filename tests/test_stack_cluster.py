"""aha on an existing Ray cluster, submitted the way users submit it.

A head is started with `ray start --head` and token authentication (the token lives in this
test's temporary HOME, never the user's), then `ray job submit --working-dir <repo>` runs
`aha train` with `cluster.address = "auto"`: the driver joins the cluster, the roles are Ray
actors of that cluster, and two steps of the loop run end to end.
"""

import contextlib
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

from cluster.output.run_log import read_metrics

pytestmark = pytest.mark.stack
RAY = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parent.parent

RECIPE = """
[model]
path = "{out}/model"
[model.tiny]
hidden_size = 128
num_layers = 2
[data]
train_path = "{out}/data/train.parquet"
template = "{{prompt}} <think>"
max_prompt_tokens = 32
[data.synthetic]
task = "chain_sum"
train_rows = 32
eval_rows = 0
[rollout]
group_size = 4
prompts_per_step = 2
max_new_tokens = 8
max_model_len = 64
kv_cache_gb = 0.1
enforce_eager = true
[reward]
weights = {{ arithmetic = 1.0 }}
workers_per_scorer = 1
[learner]
num_ranks = 1
micro_batch_size = 8
[cluster]
address = "auto"
rollout_cpus = 1
learner_cpus = 1
scorer_cpus = 0.5
timeout_s = 300
[run]
output_dir = "{out}/run"
steps = 2
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A token-protected Ray head on free ports; killed with its whole process group after."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    # A short session directory: Ray's unix sockets live in it, and pytest's tmp_path can be too
    # long for a socket path (108 bytes).
    ray_dir = tempfile.mkdtemp(prefix="aha-ray-", dir="/tmp")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={ray_dir}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    jobs_url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "job", "list", "--address", jobs_url], env=env,
                             capture_output=True, timeout=60).returncode != 0:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head's job server did not come up within 120 s"
            time.sleep(2)
        yield env, jobs_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        _kill_processes_mentioning(ray_dir)  # Ray daemons that left the head's process group
        shutil.rmtree(ray_dir, ignore_errors=True)


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


def test_a_job_submitted_to_a_token_protected_cluster_trains(tmp_path, ray_head):
    env, jobs_url = ray_head
    # Without the token the cluster's job API refuses the client.
    no_token = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    refused = subprocess.run([RAY, "job", "list", "--address", jobs_url], env=no_token,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(out=tmp_path))
    runtime_env = '{"excludes": [".venv/", ".git/", "runs/", ".whl/", "__pycache__/"]}'
    # The head's job agent registers a little after its job server answers: on a busy machine a
    # first submission can be refused with "No available agent"; nothing was submitted then.
    deadline = time.monotonic() + 180
    while True:
        submitted = subprocess.run(
            [RAY, "job", "submit", "--address", jobs_url, "--submission-id", "aha-test-job",
             "--working-dir", str(REPO), "--runtime-env-json", runtime_env, "--",
             sys.executable, "-m", "cluster.cli", "train", str(recipe)],
            env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in submitted.stderr or time.monotonic() > deadline:
            break
        time.sleep(3)
    logs = submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert submitted.returncode == 0, logs
    status = subprocess.run([RAY, "job", "status", "--address", jobs_url, "aha-test-job"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "Job 'aha-test-job' succeeded" in status.stdout, logs + status.stdout + status.stderr
    assert "[aha] done" in submitted.stdout, logs
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[-1]["learner/weight_version"] == 2
    assert (tmp_path / "run" / "checkpoints" / "version-2" / "driver-state.json").is_file()  # complete
