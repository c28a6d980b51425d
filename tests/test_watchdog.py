"""The run's watchdog (cluster/startup/watchdog.py) on real processes: a driver killed with -9
takes every process it started with it, grandchildren and reparented orphans included, and
nothing that is not its own."""

import os
import signal
import subprocess
import sys
import time

import uuid

import psutil

from cluster.startup import watchdog

# A "driver": starts a child that starts a grandchild, then a child whose own parent exits at
# once (so it is reparented to init while the driver lives), then prints the pids and waits.
DRIVER = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]]
child = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(300)", *sleeper])
middle = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(2)", *sleeper])
print(child.pid, middle.pid, flush=True)
time.sleep(300)
"""


def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]


def _marked(marker: str) -> list[int]:
    """The live processes whose command line carries `marker`."""
    return _alive([p.pid for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])])


def test_a_driver_killed_with_minus_9_leaves_no_process_it_started_and_others_are_left_alone():
    marker = uuid.uuid4().hex
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, marker], stdout=subprocess.PIPE, text=True)
    try:
        driver.stdout.readline()
        keeper = subprocess.Popen([sys.executable, watchdog.__file__, str(driver.pid)], start_new_session=True)
        time.sleep(3.5)  # the orphan's parent has exited: it is no longer the driver's descendant
        descendants = {p.pid for p in psutil.Process(driver.pid).children(recursive=True)}
        started = [pid for pid in _marked(marker) if pid != driver.pid]  # the child, its grandchild, the orphan
        assert len(started) == 3 and len(set(started) - descendants) == 1, (started, descendants)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        keeper.wait(timeout=30)  # the watchdog exits once it has ended what was left
        assert _marked(marker) == []
        assert bystander.poll() is None  # not the driver's: untouched
    finally:
        bystander.kill()
        driver.kill()


def test_the_watchdog_of_a_driver_that_exits_normally_ends_its_leftovers_and_returns_what_it_killed():
    driver = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
                               "'import time; time.sleep(300)']); import time; time.sleep(1.5)"])
    killed = watchdog.watch(driver.pid, poll_s=0.2, grace_s=0.5)
    driver.wait(timeout=10)
    assert len(killed) == 1 and _alive([killed[0][0]]) == []
    assert watchdog.watch(driver.pid) == []  # a driver already gone: nothing to watch, at once
