"""One way every role's actors are pinned: a placement group of one bundle per actor, each
bundle labelled with the node the run's plan (cluster/startup/live_placement.py) put it on.

Without a plan (a pool started alone, as tests and benches do), PACK keeps a small job on one
node and Ray spreads what does not fit. Actor i is started in bundle i, and so is any
replacement of it.
"""

from __future__ import annotations

from cluster.startup.live_placement import label_selectors

NODE_CHECK_S = 5.0  # while a placement waits: how often the planned nodes are checked for loss
MOVE_WAIT_S = 30.0  # at most this long to place a replacement off a lost node


def bundle_of(cpus: float, gpus: float) -> dict[str, float]:
    """One actor's resources as a placement-group bundle (no GPU key when it takes none)."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


class NodeLost(RuntimeError):
    """A node the plan put bundles on is gone (Ray marked it dead) before they were placed."""

    def __init__(self, nodes: list[str], what: str):
        super().__init__(f"placing {what}: node {', '.join(n[:12] for n in nodes)} is lost")
        self.nodes = nodes


def placed_group(ray, bundle: dict, count: int, nodes: list[str] | None, timeout_s: float, what: str):
    """A ready placement group of `count` copies of `bundle`, bundle i on `nodes[i]` where given;
    bounded by `timeout_s`, the error naming `what` (a cluster too small is the usual cause).
    A planned node that Ray marks dead meanwhile is NodeLost at once: its bundles would wait
    for it for ever."""
    import time

    from ray.util.placement_group import placement_group

    group = placement_group([dict(bundle) for _ in range(count)], strategy="PACK",
                            bundle_label_selector=label_selectors(nodes) if nodes else None)
    ready, deadline = group.ready(), time.monotonic() + timeout_s
    while not ray.wait([ready], timeout=max(min(NODE_CHECK_S, deadline - time.monotonic()), 0))[0]:
        lost = sorted(set(nodes or ()) - alive_nodes(ray))
        if lost or time.monotonic() >= deadline:
            remove_group(group)
            if lost:
                raise NodeLost(lost, f"{count} {what}")
            raise TimeoutError(f"placing {count} {what} ({bundle} each; is the cluster big enough?) did not finish "
                               f"within {timeout_s:g} s (cluster.timeout_s)")
    ray.get(ready)
    return group


def alive_nodes(ray) -> set[str]:
    """The ids of the nodes Ray counts as alive now."""
    return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}


class RolePlacement:
    """A role's actors pinned where the plan put them: actor i in bundle i of one placement group.

    A replacement goes back into its actor's bundle (`for_replacement`); where that bundle's node
    is lost, it gets a bundle of its own on a surviving node with room instead, or the run stops
    in one line saying what no surviving node has.
    """

    def __init__(self, ray, bundle: dict, count: int, nodes: list[str] | None, timeout_s: float, what: str):
        self._ray, self.bundle, self.timeout_s = ray, bundle, timeout_s
        self.group = placed_group(ray, bundle, count, nodes, timeout_s, what)
        self._nodes = _bundle_nodes(self.group)  # read now: Ray forgets a lost node's bundles
        self._moved: dict[int, object] = {}  # actor index -> its own group, off a lost node

    def options(self, index: int) -> dict:
        """Actor options that start actor `index` where it belongs."""
        moved = self._moved.get(index)
        return in_bundle(moved, 0) if moved is not None else in_bundle(self.group, index)

    def for_replacement(self, index: int, unit: str) -> dict:
        """`options(index)` for a replacement of actor `index` (`unit` names it), moved first to a
        surviving node if its node is lost; RunInterrupted if no surviving node has the room."""
        from cluster.wire.errors import RunInterrupted

        node = self._nodes.get(index)
        if node is None or node in alive_nodes(self._ray):
            return self.options(index)
        try:  # a surviving node with room takes it at once; waiting longer would not make room
            group = placed_group(self._ray, self.bundle, 1, None, min(self.timeout_s, MOVE_WAIT_S), unit)
        except TimeoutError:
            raise RunInterrupted(f"{unit}'s node {node[:12]} is lost and no surviving node has {self.bundle} free "
                                 "for it; add a node, or resume on a cluster with the room") from None
        if index in self._moved:
            remove_group(self._moved[index])
        self._moved[index], self._nodes[index] = group, _bundle_nodes(group)[0]
        print(f"[aha] {unit}'s node {node[:12]} is lost: its replacement goes to node {self._nodes[index][:12]}",
              flush=True)
        return self.options(index)

    def remove(self) -> None:
        for group in [self.group, *self._moved.values()]:
            remove_group(group)


def _bundle_nodes(group) -> dict[int, str]:
    """Bundle index -> the id of the node Ray placed it on."""
    from ray.util.placement_group import placement_group_table

    return dict(placement_group_table(group)["bundles_to_node_id"])


def in_bundle(group, index: int) -> dict:
    """Actor options that start an actor in bundle `index` of `group`."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, index)}


def remove_group(group) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(group)
