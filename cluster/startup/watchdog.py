"""The run's watchdog: every process the driver started ends with the driver, however it ends.

Ray ends most of what a local `ray.init()` started when the driver exits, and fate-shares some
processes with it, but not all: after a `kill -9` of the driver, Ray's dashboard and runtime-env
agents were found alive minutes later, reparented to init, with nothing left to serve. So the
driver starts this small process (`start_watchdog`), in a session of its own so that the
terminal's Ctrl-C does not reach it. It notes the driver's descendants every second (pid and
create time, so a reused pid is never mistaken for one of them) and, once the driver is gone
and Ray has had a few seconds to end its own processes, kills whatever of them is left, with
their children. Then it exits.

This file runs as a script (`python watchdog.py PID`): it imports only the standard library and
psutil, so it starts in a fraction of a second, beside Ray's own start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 1.0  # how often the driver's descendants are noted, and its liveness checked
GRACE_S = 3.0  # after the driver is gone: Ray's own clean-up first

_started_for: set[int] = set()  # driver pids (this process's) that have a watchdog already


def start_watchdog() -> None:
    """Start the watchdog of this process (once per process; the watchdog outlives a Ray
    shutdown and restart within the same driver, and ends after the driver)."""
    if os.getpid() in _started_for:
        return
    _started_for.add(os.getpid())
    subprocess.Popen([sys.executable, __file__, str(os.getpid())], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def watch(driver_pid: int, poll_s: float = POLL_S, grace_s: float = GRACE_S) -> list[tuple[int, float]]:
    """Note `driver_pid`'s descendants until it ends, then end those still alive; returns the
    `(pid, create time)` of the processes it had to kill."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return []
    seen: dict[int, float] = {}
    me = os.getpid()
    while True:
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    seen[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            pass
        if not _running(driver):
            break
        time.sleep(poll_s)
    time.sleep(grace_s)
    return _end(seen)


def _running(process) -> bool:
    """Whether `process` still runs: a killed driver whose parent has not reaped it yet is a
    zombie, which psutil counts as running."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _end(seen: dict[int, float]) -> list[tuple[int, float]]:
    """SIGKILL every process in `seen` that is still the same process, and its descendants."""
    import psutil

    left = []
    for pid, created in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == created:
                left += [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    killed = []
    for process in left:
        try:
            entry = (process.pid, process.create_time())
            process.kill()
            killed.append(entry)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(left, timeout=5)
    return killed


if __name__ == "__main__":
    watch(int(sys.argv[1]))
