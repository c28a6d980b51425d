"""The placement plan of a run on the cluster it runs on, and what `aha plan` prints.

`cluster/recipe/placement.py` computes, as a pure function, which node hosts each role's
bundles on a described cluster. Here the cluster is the real one: `live_cluster` reads Ray's
nodes (alive ones, in a fixed order) into the same description plus each node's id, and
`plan_run` returns, per role, the node id of every actor. The pools pin each actor's
placement-group bundle to its node with the `ray.io/node-id` label, so the actors sit where
the plan says, and a plan that cannot fit is one line before any actor starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cluster.recipe.placement import (ROLES, ClusterSpec, ClusterSpecError, NodeSpec, Placement, cluster_spec_from_toml,
                                      job_roles, plan_placement)

NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries it; a bundle selecting it lands there
_SHORTHAND = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?$")
CPUS_PER_GPU = 16  # what `NxG` assumes when it names no CPU count


@dataclass(frozen=True)
class RunPlan:
    """Where a run's actors go: the plan, and the Ray node id of each of its nodes."""

    placement: Placement
    node_ids: tuple[str, ...]

    def nodes_of(self, role: str) -> list[str]:
        """The node id of each `role` actor, by actor index."""
        count = len(self.placement.bundles(role))
        return [self.node_ids[self.placement.node_of(role, index)] for index in range(count)]


def parse_cluster(text: str) -> ClusterSpec:
    """A cluster from `--cluster`: a description file (deploy/clusters/*.toml) or `NxG[xC]`
    (N nodes of G GPUs and C CPUs each; C defaults to 16 per GPU, 16 without GPUs)."""
    match = _SHORTHAND.match(text)
    if match:
        count, gpus = int(match[1]), int(match[2])
        cpus = int(match[3]) if match[3] else CPUS_PER_GPU * max(gpus, 1)
        if count < 1:
            raise ClusterSpecError(f"--cluster {text}: needs at least one node")
        return ClusterSpec(tuple(NodeSpec(cpus=cpus, gpus=gpus) for _ in range(count)))
    if not os.path.exists(text):
        raise ClusterSpecError(f"--cluster {text}: neither a cluster file nor NxG[xC] (e.g. 2x8 or 2x8x96)")
    return cluster_spec_from_toml(text)


def live_cluster(ray) -> tuple[ClusterSpec, tuple[str, ...]]:
    """The running cluster's alive nodes (head first, then by id) and their node ids."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    alive.sort(key=lambda n: (not n.get("Resources", {}).get("node:__internal_head__"), n["NodeID"]))
    nodes = tuple(NodeSpec(cpus=float(n["Resources"].get("CPU", 0)), gpus=float(int(n["Resources"].get("GPU", 0))),
                           memory_gb=round(n["Resources"].get("memory", 0) / 2**30, 1)) for n in alive)
    return ClusterSpec(nodes), tuple(n["NodeID"] for n in alive)


def plan_run(recipe, ray, job: str) -> RunPlan:
    """The plan of the roles aha command `job` starts for `recipe` (`job_roles`), on the cluster
    Ray is connected to; PlacementError (one line) if it cannot fit."""
    spec, node_ids = live_cluster(ray)
    return RunPlan(plan_placement(recipe, spec, job_roles(recipe, job)), node_ids)


def placement_record(plan: RunPlan, groups: dict[str, object], planned: dict[str, list[str]] | None = None) -> dict:
    """What `placement.json` holds: each node (id, CPUs, GPUs), and per role the node each
    actor was planned on and the node Ray placed its bundle on (they must agree). `groups`:
    role -> the placement group its actors were started in (None: a role the job has not).
    `planned`: role -> the planned nodes of those actors, where they are a part of the plan's
    for that role (aha eval's engines for one model, where two models' engines fit)."""
    from ray.util.placement_group import placement_group_table

    def placed(group) -> list[str]:
        table = placement_group_table(group)["bundles_to_node_id"]
        return [table[index] for index in sorted(table)]

    return {
        "nodes": [{"id": node_id, "cpus": node.spec.cpus, "gpus": node.spec.gpus}
                  for node_id, node in zip(plan.node_ids, plan.placement.nodes)],
        "planned": {role: (planned or {}).get(role, plan.nodes_of(role)) for role in ROLES
                    if plan.placement.bundles(role)},
        "placed": {role: placed(group) for role, group in groups.items() if group is not None},
    }


def write_placement(path, plan: RunPlan, groups: dict[str, object]) -> dict:
    """Write `placement_record` to `path` (placement.json) and return it."""
    import json
    from pathlib import Path

    record = placement_record(plan, groups)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
    return record


def label_selectors(node_ids: list[str]) -> list[dict[str, str]]:
    """Per-bundle label selectors that pin bundle i to node `node_ids[i]`."""
    return [{NODE_ID_LABEL: node_id} for node_id in node_ids]


def describe_nodes(placement: Placement) -> str:
    """Per node, what it hosts by actor index and what is left: `aha plan`'s detail lines."""
    lines = []
    for node in placement.nodes:
        hosted = []
        for role in ROLES:
            indices = [b.index for b in node.bundles if b.role == role]
            if indices:
                hosted.append(f"{role} {_ranges(indices)}")
        lines.append(f"node {node.index}: {'; '.join(hosted) or 'nothing'} (free: {node.free_gpus:g} GPUs, "
                     f"{node.free_cpus:g} CPUs)")
    return "\n".join(lines)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)
