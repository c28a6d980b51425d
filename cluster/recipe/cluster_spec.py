"""Cluster descriptions (`deploy/clusters/*.toml`, or the running cluster read by
cluster/startup/live_placement.py): the nodes a placement plan (cluster/recipe/placement.py) puts
the roles' bundles on. Every value is checked: a description that cannot be used is one line
naming the key at fault.

Pure Python, no Ray import.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

_NODE_KEYS = ("cpus", "gpus", "memory_gb", "count")


class ClusterSpecError(ValueError):
    """A cluster description that cannot be used; one line naming the key at fault."""


def _finite(value, key: str, *, minimum: float, whole: bool = False) -> float:
    # bool is an int: `gpus = true` is a typo, not one GPU.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ClusterSpecError(f"{key}: expected a finite number, got {value!r:.60}")
    if value < minimum:
        raise ClusterSpecError(f"{key}: must be >= {minimum:g}, got {value:g}")
    if whole and value != int(value):
        raise ClusterSpecError(f"{key}: must be a whole number, got {value:g}")
    return float(value)


@dataclass(frozen=True)
class NodeSpec:
    """One machine: logical CPUs and GPUs as Ray counts them, host memory (informational)."""

    cpus: float
    gpus: float
    memory_gb: float = 0

    def __post_init__(self):
        _finite(self.cpus, "cpus", minimum=0)
        _finite(self.gpus, "gpus", minimum=0, whole=True)  # a node has whole devices
        _finite(self.memory_gb, "memory_gb", minimum=0)


@dataclass(frozen=True)
class ClusterSpec:
    """The nodes of a cluster, in the order the planner fills them."""

    nodes: tuple[NodeSpec, ...]

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if not self.nodes:
            raise ClusterSpecError("nodes: a cluster needs at least one node")

    @property
    def cpus(self) -> float:
        return sum(node.cpus for node in self.nodes)

    @property
    def gpus(self) -> float:
        return sum(node.gpus for node in self.nodes)


def cluster_spec_from_dict(table: dict) -> ClusterSpec:
    """Build a ClusterSpec from `{"nodes": [{"cpus", "gpus", "memory_gb"?, "count"?}, ...]}`.

    `count` repeats a node (a homogeneous cluster is one entry). Unknown keys are errors, as
    in recipes: a misspelt `gpu = 8` must not silently describe a CPU-only node.
    """
    if not isinstance(table, dict) or set(table) != {"nodes"}:
        extra = sorted(set(table) - {"nodes"}) if isinstance(table, dict) else []
        raise ClusterSpecError(f"{extra[0]}: unknown key (known: nodes)" if extra
                               else "nodes: a cluster description needs a [[nodes]] list")
    entries = table["nodes"]
    if not isinstance(entries, list) or not entries:
        raise ClusterSpecError("nodes: expected a non-empty list of [[nodes]] tables")
    nodes = []
    for i, entry in enumerate(entries):
        key = f"nodes[{i}]"
        if not isinstance(entry, dict):
            raise ClusterSpecError(f"{key}: expected a table, got {type(entry).__name__}")
        for name in entry:
            if name not in _NODE_KEYS:
                raise ClusterSpecError(f"{key}.{name!s:.40}: unknown key (known: {', '.join(_NODE_KEYS)})")
        for name in ("cpus", "gpus"):
            if name not in entry:
                raise ClusterSpecError(f"{key}.{name}: is required")
        count = int(_finite(entry.get("count", 1), f"{key}.count", minimum=1, whole=True))
        spec = NodeSpec(
            cpus=_finite(entry["cpus"], f"{key}.cpus", minimum=0),
            gpus=_finite(entry["gpus"], f"{key}.gpus", minimum=0, whole=True),
            memory_gb=_finite(entry.get("memory_gb", 0), f"{key}.memory_gb", minimum=0),
        )
        nodes.extend([spec] * count)
    return ClusterSpec(tuple(nodes))


def cluster_spec_from_toml(path: str | os.PathLike) -> ClusterSpec:
    """Read a cluster description (`deploy/clusters/*.toml`); ClusterSpecError on any problem."""
    file = Path(path)
    try:
        table = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ClusterSpecError(f"cluster file '{file}' cannot be read: {err.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ClusterSpecError(f"cluster file '{file}' is not valid TOML: {str(err).splitlines()[0]}") from None
    try:
        return cluster_spec_from_dict(table)
    except ClusterSpecError as err:
        raise ClusterSpecError(f"cluster file '{file}': {err}") from None
