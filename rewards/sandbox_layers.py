"""The isolation layers under `rewards.sandbox.run_python`, and the probe that finds which work.

- BOOTSTRAP, the supervisor: joins the run's fresh cgroups, forks the program under
  rlimits and, as child subreaper, kills and reaps all it leaves behind.
- Cgroups (v1): pids (stops fork bombs even as root) and memory (caps the whole tree),
  one of each per run, removed after it.
- bubblewrap (`bwrap`): namespaces; only the Python runtime is visible (read-only), the cwd
  is a size-capped tmpfs, no network, no host processes.
`probe()` tries each layer once per process by actually using it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

log = logging.getLogger(__name__)

MiB = 1 << 20
CODE_NAME = "main.py"
SANDBOX_CWD = "/tmp"            # under bwrap: a size-capped tmpfs holding main.py
SCRATCH_MB = 64                 # its size (RAM, charged to the memory cgroup)
MEMORY_CGROUP_SLACK_MB = 32     # bwrap's helpers and page cache, on top of memory_mb
# glibc reserves 64 MiB of address space per thread arena, which would make RLIMIT_AS fail
# programs that merely start a few threads. (-I makes Python ignore PYTHON* variables.)
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}
# -I: no PYTHON* env vars, no user site, script dir not on sys.path. -B: no .pyc files.
# Not -S: `site` defines exit() and quit(), which model-written solutions call; it adds only
# the base installation's (read-only) site-packages, never the caller's venv.
PYTHON_FLAGS = ["-I", "-B"]

# Runs as `python -I -S -c BOOTSTRAP SPEC`. Joining the cgroups before the fork means no
# process of the run ever exists outside them. Exits the way the program did (same code or
# same signal) once every other process of the run is dead and reaped.
BOOTSTRAP = r"""
import ctypes, json, os, resource, signal, sys, time
spec = json.loads(sys.argv[1])
class Stop(Exception): pass
waiting = True
def stop(signum, frame):
    if waiting: raise Stop()  # once the wait is over, a late signal must not break clean-up
def kill_and_reap_all():
    while True:  # each kill hands the victim's own children to us: repeat until none left
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        os.kill(int(entry), signal.SIGKILL)
            except (OSError, IndexError): pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]: pass
        except ChildProcessError: return
        time.sleep(0.002)
try:
    for procs_file in spec["cgroup_procs"]:
        with open(procs_file, "w") as f: f.write(str(os.getpid()))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)   # a wall clock of its own, should the caller die
    signal.setitimer(signal.ITIMER_REAL, spec["wall_limit_s"])
    program = os.fork()
    if program == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        for name, limits in spec["rlimits"].items():
            resource.setrlimit(getattr(resource, name), tuple(limits))
        os.execv(spec["argv"][0], spec["argv"])
except BaseException as exc:
    sys.stderr.write(spec["marker"] + repr(exc) + "\n"); sys.stderr.flush(); os._exit(126)
status = None
try:
    while status is None:
        reaped, wait_status = os.waitpid(-1, 0)
        if reaped == program: status = wait_status
    waiting = False
except Stop: pass
waiting = False
kill_and_reap_all()
if status is not None and os.WIFEXITED(status): os._exit(os.WEXITSTATUS(status))
signum = os.WTERMSIG(status) if status is not None else signal.SIGKILL
if signum != signal.SIGKILL: signal.signal(signum, signal.SIG_DFL)
os.kill(os.getpid(), signum); os._exit(128 + signum)
"""


@dataclass(frozen=True)
class Cgroup:
    controller: str
    path: str

    @classmethod
    def create(cls, controller: str, parent: str, settings: dict) -> "Cgroup":
        name = f"aha-sandbox-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        cgroup = cls(controller, os.path.join(parent, name))
        os.mkdir(cgroup.path)
        try:
            for setting, value in settings.items():
                with open(os.path.join(cgroup.path, setting), "w") as f:
                    f.write(str(value))
        except OSError:
            cgroup.destroy()
            raise
        return cgroup

    def kill_all(self, spare: int | None = None) -> None:
        for _ in range(200):   # repeat: a member may fork between the read and the kill
            try:
                with open(os.path.join(self.path, "cgroup.procs")) as f:
                    members = [int(pid) for pid in f.read().split() if int(pid) != spare]
            except FileNotFoundError:
                return
            if not members:
                return
            for pid in members:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)

    def oom_kills(self) -> int:
        try:
            with open(os.path.join(self.path, "memory.oom_control")) as f:
                return int(dict(line.split() for line in f if line.strip()).get("oom_kill", 0))
        except (OSError, ValueError):
            return 0   # not a memory cgroup, or a kernel without the counter

    def destroy(self) -> None:
        self.kill_all()
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)   # killed members are still leaving
        log.warning("could not remove sandbox cgroup %s", self.path)


def create_cgroups(memory_mb: int, max_processes: int) -> list[Cgroup]:
    caps, made = probe(), []
    total_memory = (memory_mb + SCRATCH_MB + MEMORY_CGROUP_SLACK_MB) * MiB
    try:
        if caps.pids_parent:
            made.append(Cgroup.create("pids", caps.pids_parent, {"pids.max": max_processes}))
        if caps.memory_parent:
            made.append(Cgroup.create("memory", caps.memory_parent,
                                       {"memory.limit_in_bytes": total_memory}))
    except OSError:
        for cgroup in made:
            cgroup.destroy()
        raise
    return made


def _usable_cgroup_parent(controller: str, setting: str, value: int, notes: list) -> str | None:
    """This process's own directory in the cgroup v1 hierarchy of `controller`, if a child
    cgroup can actually be made there."""
    with open("/proc/mounts") as f:
        mounts = [fields[1] for fields in map(str.split, f) if len(fields) >= 4
                  and fields[2] == "cgroup" and controller in fields[3].split(",")]
    with open("/proc/self/cgroup") as f:
        own = [path for _, names, path in (line.rstrip("\n").split(":", 2) for line in f)
               if controller in names.split(",")]
    if not mounts or not own:
        notes.append(f"no cgroup v1 '{controller}' hierarchy is mounted")
        return None
    parent = os.path.join(mounts[0], own[0].lstrip("/"))
    try:
        _remove_stale(parent, os.rmdir)   # rmdir only ever removes an empty cgroup
        Cgroup.create(controller, parent, {setting: value}).destroy()
    except OSError as exc:
        notes.append(f"cannot create a '{controller}' cgroup in {parent}: {exc}")
        return None
    return parent


def _remove_stale(parent: str, remove, min_age_s: float = 0.0) -> None:
    """Removes what callers killed mid-run left (e.g. a scorer worker replaced after a hang;
    its supervisor still ended the program): entries named after a process that is gone."""
    for name in os.listdir(parent):
        owner = name.split("-")[2] if name.startswith("aha-sandbox-") else ""
        path = os.path.join(parent, name)
        try:
            if (owner.isdigit() and not os.path.exists(f"/proc/{owner}")
                    and time.time() - os.stat(path).st_mtime >= min_age_s):
                remove(path)
        except OSError:
            pass   # its supervisor is still ending the run, or another caller was faster


def real_python() -> str:
    # The real interpreter, not a venv's symlink: only its own installation is bound in.
    return os.path.realpath(sys.executable or shutil.which("python3") or "/usr/bin/python3")


SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache")


def _python_runtime_dirs() -> list[str]:
    # The base installation and the stdlib actually imported; never the caller's venv.
    candidates = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(real_python()),
                  os.path.dirname(os.path.realpath(os.__file__))}
    kept = []
    for path in sorted(os.path.realpath(p) for p in candidates if p):   # parents first
        if path == "/" or not os.path.isdir(path):
            continue   # never bind the whole host; the bwrap probe then fails loudly
        if not any(os.path.commonpath([path, root]) == root for root in (*SYSTEM_PATHS, *kept)):
            kept.append(path)
    return kept


def bwrap_argv(bwrap_path: str, code_path: str) -> list[str]:
    # --cap-drop ALL matters as root: bwrap would otherwise keep root's capabilities inside,
    # enough to remount the read-only binds writable.
    argv = [bwrap_path, "--unshare-all", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL"]
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            argv += ["--ro-bind", path, path]
    for path in _python_runtime_dirs():
        argv += ["--ro-bind", path, path]
    return argv + ["--proc", "/proc", "--dev", "/dev",
                   "--size", str(SCRATCH_MB * MiB), "--tmpfs", SANDBOX_CWD,
                   "--ro-bind", code_path, f"{SANDBOX_CWD}/{CODE_NAME}",
                   "--chdir", SANDBOX_CWD]


def _bwrap_works(bwrap_path: str | None, notes: list) -> bool:
    if bwrap_path is None:
        notes.append("bwrap (Debian package 'bubblewrap') is not installed")
        return False
    with tempfile.TemporaryDirectory(prefix="aha-sandbox-probe-") as workdir:
        code_path = os.path.join(workdir, CODE_NAME)
        with open(code_path, "w") as f:
            f.write("print('ok')\n")
        argv = bwrap_argv(bwrap_path, code_path) + [real_python(), *PYTHON_FLAGS, CODE_NAME]
        try:
            probe = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   env=CLEAN_ENV, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            notes.append(f"bwrap could not be run: {exc!r}")
            return False
    if probe.returncode != 0 or probe.stdout.strip() != b"ok":
        detail = probe.stderr.decode(errors="replace").strip()[-300:]
        notes.append(f"bwrap is refused here (exit {probe.returncode}): {detail}")
        return False
    return True


@dataclass(frozen=True)
class Capabilities:
    bwrap_path: str | None      # set only when a trial run under bwrap worked
    pids_parent: str | None     # where per-run pids cgroups are created
    memory_parent: str | None
    notes: tuple[str, ...]      # what is NOT isolated here, and why


@functools.lru_cache(maxsize=1)
def probe() -> Capabilities:
    """Checks each layer once per process by actually using it."""
    notes: list[str] = []
    pids_parent = _usable_cgroup_parent("pids", "pids.max", 16, notes)
    if pids_parent is None:
        notes.append("fork bombs are limited only by RLIMIT_NPROC, which does not apply to "
                     "root" + (" (this process runs as root)" if os.geteuid() == 0 else ""))
    memory_parent = _usable_cgroup_parent("memory", "memory.limit_in_bytes", 64 * MiB, notes)
    if memory_parent is None:
        notes.append("memory is capped per process only (RLIMIT_AS): N processes may use "
                     "N x memory_mb")
    # The age guard spares a /tmp shared with another pid namespace.
    _remove_stale(tempfile.gettempdir(), shutil.rmtree, min_age_s=3600)
    # Scorer workers may run with a bare PATH; the Debian package puts bwrap in /usr/bin.
    bwrap_path = shutil.which("bwrap", path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
    if not _bwrap_works(bwrap_path, notes):
        bwrap_path = None
        notes.append("NOT ISOLATED without bwrap: the program can read and write every file "
                     "this process can, open network connections, see other processes and "
                     "their environments in /proc, and signal them (kill the scorer)")
    return Capabilities(bwrap_path, pids_parent, memory_parent, tuple(notes))
