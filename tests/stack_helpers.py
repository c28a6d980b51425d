"""What the real-stack tests of `aha train` share: the command, a run of the tiny recipe
(cluster/inputs/tiny_recipe.py), waiting on a running one, and the prompts a run should
consume against those it did."""

import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe

AHA = str(Path(sys.executable).with_name("aha"))


def train(tmp_path, *overrides, timeout=600, env=None):
    """`aha train` on the tiny recipe in `tmp_path` with command-line `overrides`; it must succeed.
    Returns the run directory and the finished process."""
    recipe = write_tiny_recipe(tmp_path / "recipe.toml")
    done = subprocess.run([AHA, "train", str(recipe), *overrides], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return tmp_path / "run", done


def wait_for(condition, process, timeout=300):
    """Poll `condition` until it holds; fail if `process` ends first (showing its stderr where
    that is piped) or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            stderr = process.communicate()[1] or ""
            pytest.fail(f"the run ended first (exit {process.returncode}): {stderr[-3000:]}")
        assert time.monotonic() < deadline, f"timed out after {timeout} s"
        time.sleep(0.1)


def train_rows(tmp_path):
    """The prompt rows the tiny recipe's synthetic training file holds."""
    from cluster.inputs.data import load_prompt_rows

    return load_prompt_rows(tmp_path / "data" / "train.parquet")


def sampler_order(tmp_path, steps: int) -> dict[int, list[int]]:
    """What an uninterrupted on-policy run consumes: the seeded sampler's batches, in order."""
    from cluster.inputs.data import PromptSampler

    sampler = PromptSampler(train_rows(tmp_path), seed=0, shuffle=True)
    return {step: sorted(row.index for row in sampler.next_batch(4)) for step in range(1, steps + 1)}


def consumed(run) -> dict[int, list[int]]:
    """Prompt indices trained on, per step, from the run's rollout files."""
    rows = pq.read_table(run / "rollouts").to_pylist()
    steps: dict[int, set[int]] = {}
    for row in rows:
        steps.setdefault(row["step"], set()).add(row["prompt_index"])
    return {step: sorted(indices) for step, indices in sorted(steps.items())}


def process_tree(pid: int) -> dict[tuple[int, float], str]:
    """Every descendant of process `pid`, as (pid, create time) -> name."""
    import psutil

    tree = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            tree[(child.pid, child.create_time())] = child.name()
        except psutil.NoSuchProcess:
            continue
    return tree


def still_running(processes: dict[tuple[int, float], str], within: float) -> list[str]:
    """Which of `processes` (from `process_tree`) still run after waiting up to `within` seconds
    for them all to end: 'name (pid)' each."""
    import psutil

    deadline = time.monotonic() + within
    while True:
        left = []
        for (pid, created), name in processes.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{name} ({pid})")
            except psutil.NoSuchProcess:
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1)
