"""One way every role's actors are pinned: a placement group of one bundle per actor, each
bundle labelled with the node the run's plan (cluster/startup/live_placement.py) put it on.

Without a plan (a pool started alone, as tests and benches do), PACK keeps a small job on one
node and Ray spreads what does not fit. Actor i is started in bundle i, and so is any
replacement of it.
"""

from __future__ import annotations

from cluster.roles.calls import get_all
from cluster.startup.live_placement import label_selectors


def bundle_of(cpus: float, gpus: float) -> dict[str, float]:
    """One actor's resources as a placement-group bundle (no GPU key when it takes none)."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def placed_group(ray, bundle: dict, count: int, nodes: list[str] | None, timeout_s: float, what: str):
    """A ready placement group of `count` copies of `bundle`, bundle i on `nodes[i]` where given;
    bounded by `timeout_s`, the error naming `what` (a cluster too small is the usual cause)."""
    from ray.util.placement_group import placement_group

    group = placement_group([dict(bundle) for _ in range(count)], strategy="PACK",
                            bundle_label_selector=label_selectors(nodes) if nodes else None)
    get_all(ray, [group.ready()], timeout_s, f"placing {count} {what} ({bundle} each; is the cluster big enough?)")
    return group


def in_bundle(group, index: int) -> dict:
    """Actor options that start an actor in bundle `index` of `group`."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, index)}


def remove_group(group) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(group)
