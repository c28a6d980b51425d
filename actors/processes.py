"""The processes an actor is made of: found by their tree, held in cgroups of their own where the
machine allows it, and ended whole however they tried to leave (a new session, a double fork).

A cgroup holds every process started inside it, wherever it was reparented, so it is the one
sure way to find them all; without one, a process group and a child subreaper find most.
Cgroup v1 (one hierarchy per controller: `pids` to hold, `memory` to limit) and v2 (the
unified hierarchy, one directory for both) are handled alike.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

_KILL_ROUNDS = 200  # each round kills what the last one found; forks in between are caught next


def process_tree() -> list[tuple[int, float]]:
    """`(pid, create time)` of this process and all its descendants, this process first; the
    create time tells a process from a later one that was given the same pid."""
    import psutil

    me = psutil.Process()
    return [(p.pid, p.create_time()) for p in [me, *me.children(recursive=True)]]


@dataclass(frozen=True)
class Cgroup:
    """One cgroup directory: `version` 1 (of one controller's hierarchy) or 2 (the unified one)."""

    path: str
    version: int

    def members(self) -> set[int]:
        """Every process in this cgroup and in the cgroups below it (a reward's code sandbox
        makes its own there)."""
        found = set()
        for folder, _, _ in os.walk(self.path):
            try:
                with open(os.path.join(folder, "cgroup.procs")) as f:
                    found.update(int(pid) for pid in f.read().split())
            except OSError:  # removed while walking
                pass
        return found

    def join(self, pid: int) -> None:
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def leave(self, pid: int) -> None:
        """Move `pid` back to the parent cgroup, so that this one can be removed."""
        Cgroup(os.path.dirname(self.path), self.version).join(pid)

    def limit_memory(self, limit_bytes: int) -> None:
        """Cap the memory of all processes here, swap included where the kernel counts it: a
        limit that swap could stretch would make a slow machine instead of a clear failure."""
        settings = [("memory.limit_in_bytes", limit_bytes), ("memory.memsw.limit_in_bytes", limit_bytes)] \
            if self.version == 1 else [("memory.max", limit_bytes), ("memory.swap.max", 0)]
        for index, (name, value) in enumerate(settings):
            path = os.path.join(self.path, name)
            if index == 0 or os.path.exists(path):  # the swap file exists only where swap is accounted
                with open(path, "w") as f:
                    f.write(str(value))

    def oom_kills(self) -> int:
        """How many processes the kernel killed here for passing the memory limit."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            with open(os.path.join(self.path, name)) as f:
                return int(dict(line.split()[:2] for line in f if line.strip()).get("oom_kill", 0))
        except (OSError, ValueError):
            return 0  # no memory controller here, or a kernel without the counter

    def remove(self) -> None:
        """Remove this cgroup and those below it, deepest first, once their members are gone."""
        folders = [folder for folder, _, _ in os.walk(self.path)]
        for folder in reversed(folders):
            for _ in range(100):
                try:
                    os.rmdir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)  # killed members are still leaving


def _mounts() -> list[tuple[str, str, set[str]]]:
    """`(mount point, "cgroup" | "cgroup2", options)` of each cgroup hierarchy mounted here."""
    with open("/proc/mounts") as f:
        rows = [line.split() for line in f]
    return [(row[1], row[2], set(row[3].split(","))) for row in rows
            if len(row) >= 4 and row[2] in ("cgroup", "cgroup2")]


def _own_cgroup(version: int, controller: str = "") -> str | None:
    """This process's cgroup directory in the v1 hierarchy of `controller`, or in the v2 one."""
    with open("/proc/self/cgroup") as f:
        entries = [line.rstrip("\n").split(":", 2) for line in f]
    for mount, kind, options in _mounts():
        if (version == 1 and kind == "cgroup" and controller in options) or (version == 2 and kind == "cgroup2"):
            for hierarchy, names, path in entries:
                if (version == 1 and controller in names.split(",")) or (version == 2 and hierarchy == "0"):
                    return os.path.join(mount, path.lstrip("/"))
    return None


def cgroup_parents() -> tuple[Cgroup | None, Cgroup | None]:
    """Where a child cgroup can be made: `(to hold processes, to limit memory)`, each None where
    the machine has none. v1's `pids` and `memory` hierarchies are preferred; v2 holds processes
    anywhere but limits memory only where the parent already hands the controller down."""
    pids, memory = _own_cgroup(1, "pids"), _own_cgroup(1, "memory")
    unified = _own_cgroup(2)
    hold = Cgroup(pids, 1) if pids else Cgroup(unified, 2) if unified else None
    if memory:
        return hold, Cgroup(memory, 1)
    if unified and "memory" in _read(os.path.join(unified, "cgroup.subtree_control")).split():
        return hold, Cgroup(unified, 2)
    return hold, None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def make_cgroup(parent: Cgroup, name: str) -> Cgroup:
    cgroup = Cgroup(os.path.join(parent.path, name), parent.version)
    os.mkdir(cgroup.path)
    return cgroup


def remove_stale_cgroups(parent: Cgroup, prefix: str) -> None:
    """End and remove the cgroups named `prefix<pid>-...` whose maker (`pid`) is gone: what
    was left when a maker and its processes were killed together."""
    try:
        names = [n for n in os.listdir(parent.path) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        owner = name[len(prefix):].split("-")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            stale = Cgroup(os.path.join(parent.path, name), parent.version)
            end_processes(None, [stale])
            stale.remove()


def _descendants(root: int) -> set[int]:
    import psutil

    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return set()
    return {c.pid for c in children if _running(c)}


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def end_processes(root: int | None, cgroups: list[Cgroup], *, spare: int | None = None) -> None:
    """SIGKILL `root`, its descendants, its process group (it leads one) and every process in
    `cgroups`, sparing `spare`. The others go first, while `root` lives: as a child subreaper it
    adopts the orphans of those killed, so a double-forked process is still found among its
    descendants where no cgroup holds it."""
    for _ in range(_KILL_ROUNDS):
        victims = (_descendants(root) if root is not None else set()) | {
            pid for cgroup in cgroups for pid in cgroup.members()}
        victims -= {root, spare}
        if not victims:
            break
        _kill(victims)
        time.sleep(0.005)
    if root is not None and root != spare:
        _kill({root})
        try:
            os.killpg(root, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for _ in range(_KILL_ROUNDS):  # what forked at the last moment, still held by a cgroup
        victims = {pid for cgroup in cgroups for pid in cgroup.members()} - {spare}
        if not victims:
            return
        _kill(victims)
        time.sleep(0.005)
