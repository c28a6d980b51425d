"""A reward worker: the processes that run reward calls for the scorer, ended whole with it.

A worker is two processes. The supervisor, the scorer's child, starts a session and, where the
machine allows it, cgroups of its own, then forks the runner, which runs the reward calls.
Whatever a reward starts (a detached child, a double fork) stays in the worker's cgroups, or
without them within reach as a descendant (both processes are child subreapers), and is
killed with the worker when it is replaced or the scorer closes. The runner is the scorer's
grandchild on purpose: Ray kills a dead actor's children at once, so the supervisor may be
killed before it can act, and the runner, watching it, then ends everything. Either process
ends everything within about a second of the scorer's death.

The memory limit (reward.memory_mb) is the worker's memory cgroup where there is one: it
counts resident memory of the worker and all it starts, and the kernel's kill is counted
(`oom_kills`), so the scorer can say the limit was the cause. Without one it is RLIMIT_AS:
per process and on address space, not resident memory, but a MemoryError names the limit.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import multiprocessing as mp
import os
import resource
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection

from actors.processes import Cgroup, cgroup_parents, end_processes, make_cgroup, remove_stale_cgroups

# Spawned, not forked: the scorer lives in a Ray worker with threads of its own.
_CONTEXT = mp.get_context("spawn")
CGROUP_PREFIX = "aha-reward-"
PARENT_POLL_S = 0.25  # how soon a worker notices that its scorer (or supervisor) is gone
_PR_SET_CHILD_SUBREAPER = 36
_M_ARENA_MAX = -8
MiB = 1 << 20


def memory_reason(memory_mb: int) -> str:
    return f"memory limit exceeded: the call took more than reward.memory_mb = {memory_mb} MB"


def _end_all(cgroups: list[Cgroup]) -> None:
    """Kill all this worker holds, remove its cgroups, and end its process group, this process last."""
    me = os.getpid()
    end_processes(me, cgroups, spare=me)
    for cgroup in cgroups:
        try:
            cgroup.leave(me)
        except OSError:
            pass
        cgroup.remove()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _worker_main(conn: Connection, names: list[str], scorer_pid: int, cgroup_paths: list[tuple[str, int]],
                 memory_mb: int, rlimit_memory: bool) -> None:
    """The supervisor: a session and cgroups of its own (before any user code, so nothing the
    reward starts is ever outside them), the runner forked, then wait. When the runner ends, end
    what it left and exit as it did; when the scorer is gone, end everything."""
    os.setsid()  # a process group of its own: killpg ends what the reward started inside it
    cgroups = [Cgroup(path, version) for path, version in cgroup_paths]
    for cgroup in cgroups:
        cgroup.join(os.getpid())
    # Orphans come here, not to init: found while no cgroup holds them, and reaped.
    ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    runner = os.fork()
    if runner == 0:
        os._exit(_run_to_the_end(conn, names, cgroups, memory_mb, rlimit_memory))
    conn.close()  # the scorer sees the runner's death as the end of its pipe
    status = _supervise(runner, scorer_pid)
    if status is None:  # the scorer is gone
        _end_all(cgroups)
    end_processes(os.getpid(), cgroups, spare=os.getpid())  # the scorer reads the cgroups, then removes them
    if os.WIFSIGNALED(status):  # die by the runner's signal: the scorer reads it as the exit code
        if os.WTERMSIG(status) != signal.SIGKILL:
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _supervise(runner: int, scorer_pid: int) -> int | None:
    """The runner's wait status once it ends, or None once the scorer is gone; reaps orphans."""
    while os.getppid() == scorer_pid:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == runner:
            return status
        if pid == 0:
            time.sleep(PARENT_POLL_S / 5)
    return None


def _watch(supervisor: int, cgroups: list[Cgroup]) -> None:
    """Runner thread: should the supervisor die (Ray kills a dead actor's children), end all.
    A thread, not PR_SET_PDEATHSIG: that signal follows the parent's thread, and killing the
    runner by it would leave what the runner started."""
    while os.getppid() == supervisor:
        time.sleep(PARENT_POLL_S)
    _end_all(cgroups)


def _run_to_the_end(*args) -> int:
    """The runner's exit code: a reward's sys.exit(n) gives n, anything else raised 1."""
    try:
        _run(*args)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    return 1


def _run(conn: Connection, names: list[str], cgroups: list[Cgroup], memory_mb: int, rlimit_memory: bool) -> None:
    """The runner: resolve the reward functions once, then answer chunks of calls ([(name,
    text), ...], fields) with one ("ok" | "error", value) message per call, in order;
    ("memory", why) and exit when a call passed the memory limit (RLIMIT_AS). Never returns."""
    if not cgroups:
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans stay findable
    # glibc reserves 64 MiB of address space per thread arena: one arena for all threads, so
    # that the watcher's does not count against RLIMIT_AS.
    ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 1)
    threading.Thread(target=_watch, args=(os.getppid(), cgroups), daemon=True).start()
    limited = rlimit_memory and memory_mb > 0
    if limited:
        # On top of what is mapped already: the worker's start re-imports the scorer's main
        # module (a Ray worker's: hundreds of MB of address space, little of it resident).
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + memory_mb * MiB, mapped + memory_mb * MiB))
    from rewards.registry import resolve_reward

    functions = {name: resolve_reward(name) for name in names}
    conn.send(("ready", None))
    while True:
        try:
            calls, fields = conn.recv()
        except EOFError:  # the scorer is gone (or closing): leave nothing behind
            _end_all(cgroups)
        for name, completion in calls:
            try:
                value = float(functions[name](completion, **fields))
            except MemoryError as err:
                if limited:  # the runner may be left half-broken: a new worker takes over
                    conn.send(("memory", memory_reason(memory_mb)))
                    os._exit(1)
                conn.send(("error", f"MemoryError: {err}"[:500]))
                continue
            except Exception as err:  # a reward bug is a failed score, not a dead worker
                conn.send(("error", f"{type(err).__name__}: {err}"[:500]))
                continue
            # A NaN would pass through the group's advantages into the loss and stop the run.
            conn.send(("ok", value) if math.isfinite(value) else ("error", f"returned {value}, not a finite number"))


class RewardWorker:
    """One worker process, its pipe and its cgroups; started ready to take calls."""

    def __init__(self, names: list[str], start_timeout_s: float, memory_mb: int):
        self.memory_mb = memory_mb
        self.cgroups, self.memory_cgroup = _make_cgroups(memory_mb)
        self.conn, child = _CONTEXT.Pipe()
        rlimit_memory = self.memory_cgroup is None
        self.process = _CONTEXT.Process(
            target=_worker_main, daemon=True,
            args=(child, names, os.getpid(), [(c.path, c.version) for c in self.cgroups], memory_mb, rlimit_memory))
        self.process.start()
        child.close()
        if not self.conn.poll(start_timeout_s):
            self.kill()
            raise TimeoutError(f"reward worker did not start within {start_timeout_s:g} s")
        try:
            self.conn.recv()  # "ready"
        except EOFError:
            code = self.kill()
            raise RuntimeError(f"reward worker exited at start-up (exit code {code})") from None

    @property
    def pid(self) -> int:
        return self.process.pid

    def death_reason(self) -> str:
        """Why the worker is gone: its memory limit, or its exit code."""
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code == -signal.SIGKILL and self.memory_cgroup is not None and self.memory_cgroup.oom_kills() > 0:
            return memory_reason(self.memory_mb)
        return f"worker died (exit code {code})"

    def kill(self) -> int | None:
        """End the worker and all it started, remove its cgroups; its exit code."""
        end_processes(self.process.pid, self.cgroups)
        self.process.join(timeout=5)
        for cgroup in self.cgroups:
            cgroup.remove()
        self.conn.close()
        return self.process.exitcode


def _make_cgroups(memory_mb: int) -> tuple[list[Cgroup], Cgroup | None]:
    """A worker's cgroups: one to hold its processes, one to limit their memory (one directory
    on cgroup v2); what the machine refuses is left out, once said why."""
    hold, memory = cgroup_parents()
    name = f"{CGROUP_PREFIX}{os.getpid()}-{time.monotonic_ns()}"
    made, memory_cgroup = [], None
    for parent, limits in [(hold, False), (memory, True)]:
        if parent is None or (limits and memory_mb <= 0):
            continue
        try:
            cgroup = next((c for c in made if os.path.dirname(c.path) == parent.path), None)
            if cgroup is None:
                remove_stale_cgroups(parent, CGROUP_PREFIX)
                cgroup = make_cgroup(parent, name)
                made.append(cgroup)
            if limits:
                cgroup.limit_memory(memory_mb * MiB)
                memory_cgroup = cgroup
        except OSError as err:
            _warn_once(f"reward workers: no cgroup in {parent.path} ({err}); "
                       + ("memory is limited per process (RLIMIT_AS)" if limits else "a process group holds them"))
    return made, memory_cgroup


@functools.lru_cache(maxsize=None)  # once per message and process
def _warn_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)
