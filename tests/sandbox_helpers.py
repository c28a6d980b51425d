"""Shared by the sandbox tests (test_sandbox.py, test_sandbox_adversarial.py): limits, and the
watch a hostile program runs under (`Machine`): its processes carry a marker so survivors can
be found, and sentinel files show whether anything outside the sandbox was touched.
"""

import os
import sys
import textwrap
import time
import uuid
from pathlib import Path

from rewards.sandbox import run_python, sandbox_capabilities

REPO = Path(__file__).resolve().parent.parent
LIMITS = {"timeout_s": 2, "memory_mb": 256}
SLACK_S = 5.0   # start-up of bwrap and two interpreters and the clean-up after a kill, on a loaded 2-core machine
SECRET = "aha-secret-" + uuid.uuid4().hex
# Process names (/proc/PID/comm, 15 characters at most) of a run: bwrap and the real python.
SANDBOX_COMMANDS = {"bwrap", os.path.basename(os.path.realpath(sys.executable))[:15]}


def require_bwrap():
    caps = sandbox_capabilities()
    assert caps["bwrap"], f"bubblewrap missing or refused (run `make setup`): {caps['notes']}"


def require_process_limit():
    # Without a pids cgroup nothing stops a fork bomb run by root: do not start one.
    caps = sandbox_capabilities()
    assert caps["pids_cgroup"] or os.geteuid() != 0, f"no pids cgroup: {caps['notes']}"


def tagged(body: str, marker: str) -> str:
    """The program re-execs itself with `marker` as its argument, so that it and every process
    it forks carry the marker in /proc/PID/cmdline, where a survivor can be found."""
    return (f"import os, sys\nif sys.argv[1:] != [{marker!r}]:\n"
            f"    os.execv(sys.executable, [sys.executable, '-I', sys.argv[0], {marker!r}])\n"
            + textwrap.dedent(body))


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass   # ended while we looked
    return found


def zombies() -> dict[int, str]:
    """Zombies a run could leave: children of this process, or orphans (parent PID 1, which
    in many containers never reaps) that were bwrap or the sandbox's Python."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                name, fields = f.read().rsplit(")", 1)
            state, parent = fields.split()[:2]
        except (OSError, ValueError):
            continue
        orphan = int(parent) == 1 and name.split("(", 1)[1] in SANDBOX_COMMANDS
        if state == "Z" and (int(parent) == os.getpid() or orphan):
            found[int(entry)] = f"{name.split('(', 1)[1]} (parent {parent})"
    return found


def own_cgroups() -> list[str]:
    prefix = f"aha-sandbox-{os.getpid()}-"
    return [name for parent in sandbox_capabilities()["cgroup_parents"]
            for name in os.listdir(parent) if name.startswith(prefix)]


class Machine:
    """A sentinel file in a temp dir and one in the repo, a marker for the run's processes,
    and a private temp root for the sandbox's work dirs."""

    def __init__(self, tmp_path: Path):
        self.marker = "aha-hostile-" + uuid.uuid4().hex
        self.sentinel = tmp_path / "sentinel.txt"
        self.sentinel.write_text("still here")
        self.repo_sentinel = REPO / f".sandbox-sentinel-{uuid.uuid4().hex}"
        self.repo_sentinel.write_text("still here")
        self.scratch_root = tmp_path / "scratch"
        self.scratch_root.mkdir()
        self.zombies_before = zombies()

    def check_unharmed(self):
        assert self.sentinel.read_text() == "still here"
        assert self.repo_sentinel.read_text() == "still here"
        assert (REPO / "pyproject.toml").is_file()
        time.sleep(0.1)
        assert processes_with(self.marker) == [], "a process of the run survived it"
        new_zombies = {pid: what for pid, what in zombies().items()
                       if pid not in self.zombies_before}
        assert not new_zombies, f"zombies left behind: {new_zombies}"
        assert own_cgroups() == [], "a cgroup of the run was not removed"
        assert list(self.scratch_root.iterdir()) == [], "a work dir was not removed"

    def run(self, body: str, **limits):
        return run_python(tagged(body, self.marker), **{**LIMITS, **limits})


def assert_ends_in_time(result, timeout_s=LIMITS["timeout_s"]):
    assert result.duration_s < timeout_s + SLACK_S, result


def assert_paths_invisible(machine):
    """The harmless probe run before any destructive program."""
    probe = run_python(f"import os\nprint(os.path.exists({str(machine.sentinel)!r}), "
                       f"os.path.exists({str(machine.repo_sentinel)!r}))", **LIMITS)
    assert probe.ok and probe.stdout.split() == ["False", "False"], probe
