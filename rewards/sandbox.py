"""Run untrusted, model-written Python in a throw-away sandbox: `run_python(code, ...)`.

- A supervisor (BOOTSTRAP) joins fresh cgroups (pids: stops fork bombs even as root; memory:
  caps the whole tree), forks the program under rlimits and, as child subreaper, kills and
  reaps all it leaves behind: no `preexec_fn` (callers may have threads), no zombies even
  under an init that never reaps (PID 1 of many containers).
- bubblewrap (`bwrap`), where it works, adds namespaces: only the Python runtime is visible
  (read-only), the cwd is a size-capped tmpfs, no network, no host processes.
- The parent enforces the wall clock and output limit, then kills the process group and
  whatever is left in the cgroups, and removes the cgroups and the temp dir.
`sandbox_capabilities()` says which layers work here; `warn_if_weak()` logs what is missing.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import selectors
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
STDERR_VERDICTS = (("MemoryError", "memory limit"), ("File too large", "file size limit"),
                   ("No space left on device", "disk limit"))
SIGNAL_VERDICTS = {signal.SIGXCPU: "cpu time limit", signal.SIGXFSZ: "file size limit"}
EXIT_GRACE_S = 0.2              # output may still sit in the pipes after the exit
SUPERVISOR_GRACE_S = 2.0        # time the supervisor gets to kill and reap after SIGTERM

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
class SandboxResult:
    ok: bool                    # exited with code 0 within every limit
    stdout: str                 # UTF-8, undecodable bytes replaced, at most max_output_bytes
    stderr: str
    reason: str                 # "ok", "exit code 1", "timeout", "memory limit", ...
    returncode: int | None      # None when the sandbox itself failed
    duration_s: float


def run_python(code: str, *, stdin: str = "", timeout_s: float, memory_mb: int,
               max_output_bytes: int = MiB, max_processes: int = 64,
               max_file_bytes: int = 16 * MiB) -> SandboxResult:
    """Run `code` as a Python file in a fresh sandbox and report what happened.

    Never raises because of what `code` does; a failure of the sandbox itself comes back as
    ok=False, returncode None, reason "sandbox unavailable: ...". Raises ValueError only for
    impossible limits (a caller's bug). Under bwrap a program that dies by signal N shows as
    returncode 128+N (bwrap's convention), so exit codes 129..192 read as signals there."""
    if timeout_s <= 0 or memory_mb < 32 or max_output_bytes < 0 or max_processes < 4:
        raise ValueError("run_python needs timeout_s > 0, memory_mb >= 32, "
                         "max_output_bytes >= 0 and max_processes >= 4")
    start = time.monotonic()
    workdir, cgroups = None, []
    try:
        workdir = tempfile.mkdtemp(prefix=f"aha-sandbox-{os.getpid()}-")
        cgroups = _create_cgroups(memory_mb, max_processes)
        limits = _rlimits(timeout_s, memory_mb, max_processes, max_file_bytes,
                          has_pids_cgroup=any(c.controller == "pids" for c in cgroups))
        return _run_in(workdir, cgroups, code, stdin, timeout_s, limits, max_output_bytes,
                       start)
    except Exception as exc:  # the sandbox's own failure: user code cannot raise in here
        return SandboxResult(False, "", "", f"sandbox unavailable: {exc!r}", None,
                             time.monotonic() - start)
    finally:
        for cgroup in cgroups:
            cgroup.destroy()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir, cgroups, code, stdin, timeout_s, limits, max_output_bytes, start):
    caps = _probe()
    code_path, stdin_path = os.path.join(workdir, CODE_NAME), os.path.join(workdir, "stdin")
    for path, text in ((code_path, code), (stdin_path, stdin)):
        # surrogatepass: a lone surrogate becomes bytes Python rejects, so the verdict is
        # the program's SyntaxError, not a failure of the sandbox.
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
    python = [_real_python(), *PYTHON_FLAGS]
    argv = (_bwrap_argv(caps.bwrap_path, code_path) + python + [CODE_NAME] if caps.bwrap_path
            else python + [code_path])
    marker = f"aha-sandbox-bootstrap-{uuid.uuid4().hex}: "
    spec = {"argv": argv, "marker": marker, "rlimits": limits,
            "wall_limit_s": timeout_s + SUPERVISOR_GRACE_S + 1,
            "cgroup_procs": [os.path.join(c.path, "cgroup.procs") for c in cgroups]}
    # stdin from a file, not a pipe: a program that never reads it cannot block the writer.
    with open(stdin_path, "rb") as stdin_file:
        proc = subprocess.Popen(
            [_real_python(), "-I", "-S", "-c", BOOTSTRAP, json.dumps(spec)],
            stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
            env=CLEAN_ENV, start_new_session=True, close_fds=True)
    try:
        out, err, verdict = _collect_output(proc, start + timeout_s, max_output_bytes)
    finally:
        returncode = _stop_and_reap(proc, cgroups)
    stdout_text, stderr_text = (b.decode("utf-8", errors="replace") for b in (out, err))
    if verdict is None and returncode == 126 and marker in stderr_text:
        reason, returncode = "sandbox unavailable: " + stderr_text.split(marker, 1)[1].strip(), None
    else:
        oom_killed = any(c.oom_kills() > 0 for c in cgroups)
        reason = verdict or _exit_reason(returncode, stderr_text, bool(caps.bwrap_path), oom_killed)
    return SandboxResult(reason == "ok", stdout_text, stderr_text, reason, returncode,
                         time.monotonic() - start)


def _rlimits(timeout_s, memory_mb, max_processes, max_file_bytes, has_pids_cgroup) -> dict:
    cpu_s = math.ceil(timeout_s) + 1   # the wall clock normally fires first; a backstop
    limits = {"RLIMIT_CPU": (cpu_s, cpu_s + 1), "RLIMIT_AS": (memory_mb * MiB,) * 2,
              "RLIMIT_FSIZE": (max_file_bytes,) * 2, "RLIMIT_NOFILE": (64, 64)}
    if not has_pids_cgroup and os.geteuid() != 0:
        # RLIMIT_NPROC counts all the user's processes, not just this run's (and root is
        # exempt), so it is only a fallback, set above what the user already runs.
        user_processes = sum(_owned_by(f"/proc/{entry}", os.geteuid())
                             for entry in filter(str.isdigit, os.listdir("/proc")))
        limits["RLIMIT_NPROC"] = (user_processes + max_processes,) * 2
    return limits


def _owned_by(path: str, uid: int) -> bool:
    try:
        return os.stat(path).st_uid == uid
    except OSError:
        return False   # the process ended while we looked


def _exit_reason(returncode: int, stderr_text: str, under_bwrap: bool, oom_killed: bool) -> str:
    if returncode == 0:
        return "ok"
    if oom_killed:
        return "memory limit"
    signum = -returncode if returncode < 0 else None
    if under_bwrap and 128 < returncode <= 128 + 64:
        signum = returncode - 128
    if signum is not None:
        return SIGNAL_VERDICTS.get(signum, f"killed by signal {signum}")
    lines = stderr_text.strip().splitlines()
    for needle, verdict in STDERR_VERDICTS:
        if lines and needle in lines[-1]:
            return verdict
    return f"exit code {returncode}"


def _collect_output(proc, deadline: float, max_bytes: int) -> tuple[bytes, bytes, str | None]:
    """Reads both pipes, keeping at most `max_bytes` of each, until the supervisor exits, the
    deadline passes or a stream outgrows `max_bytes`; the verdict is None, "timeout" or
    "output limit". Never reaps, so the pid stays a valid process-group id for the kill."""
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    received = dict.fromkeys(kept, 0)

    def finish(verdict):
        return bytes(kept[proc.stdout]), bytes(kept[proc.stderr]), verdict

    exited_at = None
    with selectors.DefaultSelector() as selector:
        for pipe in kept:
            selector.register(pipe, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if exited_at is None and _has_exited(proc.pid):
                exited_at = now
            # Something that escaped the supervisor may hold the pipes open: a grace, no more.
            if exited_at is not None and (not selector.get_map()
                                          or now >= exited_at + EXIT_GRACE_S):
                return finish(None)
            if now >= deadline:
                return finish("timeout")
            if not selector.get_map():
                time.sleep(0.01)   # the program closed its pipes but may still be running
                continue
            for key, _ in selector.select(timeout=min(0.05, deadline - now)):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                kept[key.fileobj] += data[: max_bytes - len(kept[key.fileobj])]
                received[key.fileobj] += len(data)
                if received[key.fileobj] > max_bytes:
                    return finish("output limit")


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the zombie in place: reaping it now could let the pid be reused before
    # the process-group kill.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _stop_and_reap(proc, cgroups) -> int:
    """Ends every process of the run and returns the supervisor's exit status."""
    if not _has_exited(proc.pid):
        # Kill the program's processes at once (a fork bomb starves everyone of CPU) but
        # spare the supervisor, which reaps them, kills any it finds left, and exits.
        for cgroup in cgroups:
            cgroup.kill_all(spare=proc.pid)
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        give_up_at = time.monotonic() + SUPERVISOR_GRACE_S
        while not _has_exited(proc.pid) and time.monotonic() < give_up_at:
            time.sleep(0.005)
    # Backstops, in case the supervisor itself was killed: the process group, then the
    # cgroups (a process that called setsid() left the group but not the cgroup).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for cgroup in cgroups:
        cgroup.kill_all()
    returncode = proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return returncode


@dataclass(frozen=True)
class _Cgroup:
    controller: str
    path: str

    @classmethod
    def create(cls, controller: str, parent: str, settings: dict) -> "_Cgroup":
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


def _create_cgroups(memory_mb: int, max_processes: int) -> list[_Cgroup]:
    caps, made = _probe(), []
    total_memory = (memory_mb + SCRATCH_MB + MEMORY_CGROUP_SLACK_MB) * MiB
    try:
        if caps.pids_parent:
            made.append(_Cgroup.create("pids", caps.pids_parent, {"pids.max": max_processes}))
        if caps.memory_parent:
            made.append(_Cgroup.create("memory", caps.memory_parent,
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
        _Cgroup.create(controller, parent, {setting: value}).destroy()
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


def _real_python() -> str:
    # The real interpreter, not a venv's symlink: only its own installation is bound in.
    return os.path.realpath(sys.executable or shutil.which("python3") or "/usr/bin/python3")


SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache")


def _python_runtime_dirs() -> list[str]:
    # The base installation and the stdlib actually imported; never the caller's venv.
    candidates = {sys.base_prefix, sys.base_exec_prefix, os.path.dirname(_real_python()),
                  os.path.dirname(os.path.realpath(os.__file__))}
    kept = []
    for path in sorted(os.path.realpath(p) for p in candidates if p):   # parents first
        if path == "/" or not os.path.isdir(path):
            continue   # never bind the whole host; the bwrap probe then fails loudly
        if not any(os.path.commonpath([path, root]) == root for root in (*SYSTEM_PATHS, *kept)):
            kept.append(path)
    return kept


def _bwrap_argv(bwrap_path: str, code_path: str) -> list[str]:
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
        argv = _bwrap_argv(bwrap_path, code_path) + [_real_python(), *PYTHON_FLAGS, CODE_NAME]
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
class _Capabilities:
    bwrap_path: str | None      # set only when a trial run under bwrap worked
    pids_parent: str | None     # where per-run pids cgroups are created
    memory_parent: str | None
    notes: tuple[str, ...]      # what is NOT isolated here, and why


@functools.lru_cache(maxsize=1)
def _probe() -> _Capabilities:
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
    return _Capabilities(bwrap_path, pids_parent, memory_parent, tuple(notes))


def sandbox_capabilities() -> dict:
    """What isolates `run_python` on this machine; `notes` lists every weakness (empty when
    bwrap and both cgroups work); per-run cgroups are made in `cgroup_parents`."""
    caps = _probe()
    return {"bwrap": caps.bwrap_path is not None, "pids_cgroup": caps.pids_parent is not None,
            "memory_cgroup": caps.memory_parent is not None, "notes": list(caps.notes),
            "cgroup_parents": [p for p in (caps.pids_parent, caps.memory_parent) if p]}


@functools.lru_cache(maxsize=1)
def warn_if_weak() -> tuple[str, ...]:
    """Logs, once per process, a warning listing what the sandbox does not isolate here;
    meant for the scorer's start-up. Returns the weaknesses."""
    notes = tuple(sandbox_capabilities()["notes"])
    if notes:
        log.warning("the code sandbox is WEAK on this machine:\n  - %s", "\n  - ".join(notes))
    return notes
