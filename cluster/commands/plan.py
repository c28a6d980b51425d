"""`aha plan`: where each role's actors would go, on a described cluster, the running cluster at
cluster.address, or this machine. Starts no actor."""

from __future__ import annotations

from cluster.recipe import Recipe
from cluster.recipe.placement import ClusterSpec, NodeSpec, describe, job_roles, plan_placement
from cluster.startup.live_placement import describe_nodes, live_cluster, parse_cluster


def plan(recipe: Recipe, command: str, *, described: str | None = None) -> str:
    """The placement report of `aha COMMAND` under `recipe`: on `described` (a description file
    or NxG[xC]) when given, else on the running cluster or this machine."""
    from cluster.startup.ray import connect_ray, offered_cpus

    if described:
        cluster, where = parse_cluster(described), f"--cluster {described}"
    elif recipe.cluster.address:
        cluster, _ = live_cluster(connect_ray(recipe.cluster))
        where = f"the running cluster at {recipe.cluster.address}"
    else:
        node = NodeSpec(cpus=offered_cpus(recipe.cluster), gpus=_local_gpus())
        cluster, where = ClusterSpec((node,)), "this machine"
    placement = plan_placement(recipe, cluster, job_roles(recipe, command))
    return f"on {where}:\n{describe(placement)}\n{describe_nodes(placement)}"


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()
