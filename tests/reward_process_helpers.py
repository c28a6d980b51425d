"""What the tests of reward worker processes share: user rewards that misbehave with processes
and memory, and a look at which of the processes they made are still alive."""

import textwrap
import time

import psutil

MARKER = "AHA_TEST_REWARD_CHILD"  # set in the environment of every child the rewards fork

REWARDS = textwrap.dedent(f'''
    import os, time

    def forks(completion, marker="", **fields):
        """Leaves a detached child (new session, double fork) and returns junk; "hang": then hangs."""
        child = os.fork()
        if child == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvpe("sleep", ["sleep", "300"], {{**os.environ, "{MARKER}": marker}})
            os._exit(0)
        os.waitpid(child, 0)
        if "hang" in completion:
            time.sleep(3600)
        return "junk"

    def hog(completion, **fields):
        """"hog": touches 600 MB, more than the tests' limit."""
        if "hog" in completion:
            return len(b"x" * (600 << 20))
        return 1.0

    def slow(completion, **fields):
        time.sleep(float(completion))
        return 1.0
''')


def write_rewards(folder) -> str:
    """The rewards as module `process_rewards` in `folder`; returns the folder."""
    (folder / "process_rewards.py").write_text(REWARDS)
    return str(folder)


def marked_children(marker: str) -> list[int]:
    """The living processes the rewards forked with `marker`."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARKER) == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.Error:
            pass
    return found


def wait_for_children(marker: str, count: int, within_s: float = 60.0) -> int:
    """How many children with `marker` live once `count` do (a child takes its marker when it
    runs `sleep`, a moment after the reward returned), or once `within_s` has passed."""
    deadline = time.monotonic() + within_s
    while len(marked_children(marker)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(marked_children(marker))


def snapshot(pids: list[int]) -> list[psutil.Process]:
    """The processes `pids` and their descendants now (a worker's runner among them); later
    checks cannot mistake a new process with a reused pid for one of them."""
    roots = [psutil.Process(pid) for pid in pids]
    return [process for root in roots for process in [root, *root.children(recursive=True)]]


def living(processes: list[psutil.Process]) -> list[int]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.pid)
        except psutil.Error:
            pass
    return alive


def left_after(marker: str, workers: list[psutil.Process], within_s: float) -> tuple[list[int], list[int]]:
    """`(workers, marked children)` still alive once both are gone or `within_s` has passed."""
    deadline = time.monotonic() + within_s
    while True:
        left = living(workers), marked_children(marker)
        if not any(left) or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
