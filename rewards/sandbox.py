"""Run untrusted, model-written Python in a throw-away sandbox: `run_python(code, ...)`.

- A supervisor (`sandbox_layers.BOOTSTRAP`) joins fresh cgroups (pids: stops fork bombs even
  as root; memory: caps the whole tree), forks the program under rlimits and, as child
  subreaper, kills and reaps all it leaves behind: no `preexec_fn` (callers may have
  threads), no zombies even under an init that never reaps (PID 1 of many containers).
- bubblewrap (`bwrap`), where it works, adds namespaces: only the Python runtime is visible
  (read-only), the cwd is a size-capped tmpfs, no network, no host processes.
- The parent (this module) enforces the wall clock and output limit, then kills the process
  group and whatever is left in the cgroups, and removes the cgroups and the temp dir.
The layers themselves live in `rewards.sandbox_layers`.
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
import tempfile
import time
import uuid
from dataclasses import dataclass

from rewards.sandbox_layers import (BOOTSTRAP, CLEAN_ENV, CODE_NAME, PYTHON_FLAGS, MiB,
                                    bwrap_argv, create_cgroups, probe, real_python)

log = logging.getLogger(__name__)

STDERR_VERDICTS = (("MemoryError", "memory limit"), ("File too large", "file size limit"),
                   ("No space left on device", "disk limit"))
SIGNAL_VERDICTS = {signal.SIGXCPU: "cpu time limit", signal.SIGXFSZ: "file size limit"}
EXIT_GRACE_S = 0.2              # output may still sit in the pipes after the exit
SUPERVISOR_GRACE_S = 2.0        # time the supervisor gets to kill and reap after SIGTERM



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
        cgroups = create_cgroups(memory_mb, max_processes)
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
    caps = probe()
    code_path, stdin_path = os.path.join(workdir, CODE_NAME), os.path.join(workdir, "stdin")
    for path, text in ((code_path, code), (stdin_path, stdin)):
        # surrogatepass: a lone surrogate becomes bytes Python rejects, so the verdict is
        # the program's SyntaxError, not a failure of the sandbox.
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
    python = [real_python(), *PYTHON_FLAGS]
    argv = (bwrap_argv(caps.bwrap_path, code_path) + python + [CODE_NAME] if caps.bwrap_path
            else python + [code_path])
    marker = f"aha-sandbox-bootstrap-{uuid.uuid4().hex}: "
    spec = {"argv": argv, "marker": marker, "rlimits": limits,
            "wall_limit_s": timeout_s + SUPERVISOR_GRACE_S + 1,
            "cgroup_procs": [os.path.join(c.path, "cgroup.procs") for c in cgroups]}
    # stdin from a file, not a pipe: a program that never reads it cannot block the writer.
    with open(stdin_path, "rb") as stdin_file:
        proc = subprocess.Popen(
            [real_python(), "-I", "-S", "-c", BOOTSTRAP, json.dumps(spec)],
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


def sandbox_capabilities() -> dict:
    """What isolates `run_python` on this machine; `notes` lists every weakness (empty when
    bwrap and both cgroups work); per-run cgroups are made in `cgroup_parents`."""
    caps = probe()
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
