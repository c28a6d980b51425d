"""`aha submit`: an aha job on a running Ray cluster, through Ray's job submission API.

The recipe is checked here first (a mistake is one line before anything is sent). The job is
the same aha command with `--cluster.address auto`, so its driver joins the cluster it runs
on; the repository is shipped as the job's working directory (without the virtualenv, git,
runs and caches) and the recipe must be inside it. A run's outputs must go to a path every
node sees: a relative `run.output_dir` would land in the job's temporary working directory
on the head, which Ray deletes, so it is refused. Token authentication works as for `ray job
submit`: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH in the environment.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import time
from pathlib import Path

from cluster.recipe import RecipeError
from cluster.wire.errors import RunFailed

COMMANDS = ("train", "distill", "sft", "generate", "pipeline")
EXCLUDES = [".venv/", ".git/", "runs/", ".whl/", "__pycache__/", ".pytest_cache/", "*.egg-info/"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Ray's job server answers "No available agent" until the head node's job agent has registered,
# a moment after `ray start` (longer on a busy head); nothing is submitted then.
NO_AGENT = "No available agent"
AGENT_WAIT_S = 120.0
AGENT_RETRY_S = 3.0


def job_entrypoint(command: str, recipe_path: Path, overrides: list[str], python: str, working_dir: Path) -> str:
    """The shell command the cluster runs: the aha command on the recipe, as a path inside the
    shipped working directory, joining the cluster it runs on."""
    try:
        inside = recipe_path.resolve().relative_to(working_dir.resolve())
    except ValueError:
        raise RecipeError("", f"the recipe '{recipe_path}' is outside the working directory '{working_dir}' that "
                          "is shipped to the cluster; move it inside, or run aha submit from a directory "
                          "that holds it") from None
    if _git_ignored(inside, working_dir):
        raise RecipeError("", f"the recipe '{recipe_path}' is git-ignored, and Ray leaves what .gitignore lists out "
                          "of the working directory it ships; move the recipe, or take it out of .gitignore")
    return shlex.join([python, "-m", "cluster.cli", command, str(inside), *overrides, "--cluster.address", "auto"])


def _git_ignored(path: Path, working_dir: Path) -> bool:
    """Whether git (if there is a repository and a git) ignores `path` under `working_dir`."""
    try:
        done = subprocess.run(["git", "-C", str(working_dir), "check-ignore", "-q", str(path)], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def check_output_on_shared_storage(output: Path, key: str = "run.output_dir") -> None:
    """A relative output directory would be written inside the job's temporary working directory."""
    if not Path(output).is_absolute():
        raise RecipeError(key, f"is '{output}', a relative path: on the cluster it would be written "
                          "inside the job's temporary working directory, which Ray deletes; give an absolute "
                          "path on storage every node mounts")


def output_of(command: str, recipe_path: str, overrides: list[str]) -> Path:
    """Where the job's output goes, checked as the job will load it (joining its cluster) and
    refused when not on shared storage: a mistake is one line, nothing sent."""
    joined = [*overrides, "--cluster.address", "auto"]
    if command == "pipeline":
        from cluster.recipe.pipeline import load_pipeline

        output_dir, key = load_pipeline(recipe_path, joined).output_dir, "pipeline.output_dir"
    else:
        from cluster.recipe import load_recipe

        output_dir, key = load_recipe(recipe_path, joined).output_dir, "run.output_dir"
    check_output_on_shared_storage(output_dir, key)
    return output_dir


def submit(command: str, output_dir: Path, recipe_path: Path, overrides: list[str], *, address: str, python: str,
           env: dict[str, str], follow: bool, timeout_s: float, submission_id: str = "") -> int:
    """Submit the job; print its id and where its output (`output_dir`, checked by the caller
    with `check_output_on_shared_storage`) goes; with `follow`, stream its logs and return 0 if
    it succeeded, 1 otherwise (a timeout stops following, not the job)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    working_dir = Path.cwd()
    entrypoint = job_entrypoint(command, recipe_path, overrides, python, working_dir)
    try:
        client = JobSubmissionClient(address)
    except AuthenticationError as err:
        raise RunFailed(f"the Ray job server at {address} refused aha: {_reason(err)} (a token-protected cluster "
                        "needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)") from None
    except ConnectionError as err:
        raise RunFailed(f"no Ray job server answers at {address}: {_reason(err)} (is the cluster up? "
                        "--address or RAY_ADDRESS names its dashboard)") from None
    runtime_env = {"working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env}
    job_id = submit_when_an_agent_answers(
        lambda: client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id or None),
        address)
    print(f"[aha] submitted job {job_id} to {address}: {entrypoint}", flush=True)
    print(f"[aha] the run's output: {output_dir} (on the cluster's storage)", flush=True)
    print(f"[aha] follow it with: ray job logs --address {address} --follow {job_id}", flush=True)
    if not follow:
        return 0
    status = asyncio.run(_follow(client, job_id, timeout_s))
    print(f"[aha] job {job_id}: {status}", flush=True)
    if status not in TERMINAL:
        raise RunFailed(f"job {job_id} was still {status} after --timeout {timeout_s:g} s; it goes on running "
                        f"(ray job stop --address {address} {job_id} stops it)")
    return 0 if status == "SUCCEEDED" else 1


def submit_when_an_agent_answers(submit_job, address: str, *, wait_s: float = AGENT_WAIT_S,
                                 retry_s: float = AGENT_RETRY_S) -> str:
    """`submit_job()`'s job id, calling it again every `retry_s` while the job server says its
    agent is not up yet, for up to `wait_s`; any refusal after that, or of another kind, is a
    RunFailed in one line (the job server's reasons come as RuntimeErrors with a traceback)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return submit_job()
        except RuntimeError as err:
            if NO_AGENT not in str(err):
                raise RunFailed(f"the Ray job server at {address} refused the job: {_reason(err)}") from None
            if time.monotonic() + retry_s > deadline:
                raise RunFailed(f"the Ray job server at {address} had no job agent for {wait_s:g} s: the head's "
                                "dashboard agent did not start its server (its dashboard_agent.log says why; often "
                                "its port, 52365 or ray start's --dashboard-agent-listen-port, was taken)") from None
        print(f"[aha] the cluster's job agent is not up yet; trying again in {retry_s:g} s", flush=True)
        time.sleep(retry_s)


def _reason(err: BaseException) -> str:
    """One line of a job-API error: the first, or where the server sent a traceback, its last
    (the exception it ended with)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[-1] if any("Traceback (most recent call last)" in line for line in lines) else lines[0]


async def _follow(client, job_id: str, timeout_s: float) -> str:
    """Print the job's logs as they come until it ends (or `timeout_s` > 0 passes); its status."""
    async def tail():
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        await asyncio.wait_for(tail(), timeout=timeout_s or None)
    except asyncio.TimeoutError:
        pass
    # The log stream ends with the job; its final status may take a moment to be recorded.
    deadline = time.monotonic() + 30
    status = client.get_job_status(job_id).value
    while status not in TERMINAL and time.monotonic() < deadline and not timeout_s:
        await asyncio.sleep(1)
        status = client.get_job_status(job_id).value
    return status


def env_pairs(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings from --env as a dict; RecipeError naming a malformed one."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not key.replace("_", "a").isalnum():
            raise RecipeError("", f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def default_address() -> str:
    return os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
