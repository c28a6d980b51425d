"""Role placement on a real local Ray (cluster/roles/bundles.py): a replacement goes back into its
actor's bundle; one whose node is lost is moved to a surviving node with room, or the run stops
in one line saying what no node has. (Losing a real node: tests/test_stack_cluster.py, where the
learner group restarts on the node that survives.) Here the lost node is the one thing not real:
actor 0's recorded node is set to an id no live node has, as Ray reports a node it marked dead."""

import pytest
import ray

from cluster.roles import bundles
from cluster.roles.bundles import RolePlacement, alive_nodes
from cluster.wire.errors import RunInterrupted

pytestmark = pytest.mark.stack
GONE = "f" * 56  # a node id of the right shape that no live node has


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _bundle(options: dict) -> tuple:
    """(placement group id, bundle index) an actor started with `options` takes."""
    strategy = options["scheduling_strategy"]
    return strategy.placement_group.id, strategy.placement_group_bundle_index


def _node_of(options: dict) -> str:
    """The node an actor started with `options` lands on."""

    @ray.remote(num_cpus=0.5)
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    return ray.get(where.options(**options).remote(), timeout=60)


def test_a_replacement_stays_in_its_bundle_and_moves_off_a_lost_node(local_ray, monkeypatch):
    placed = RolePlacement(ray, {"CPU": 0.5}, 2, None, 60, "test actors")
    try:
        (node,) = alive_nodes(ray)
        # Its node lives: the same bundle.
        assert _bundle(placed.for_replacement(1, "test actor 1")) == _bundle(placed.options(1)) == (placed.group.id, 1)
        assert _node_of(placed.options(1)) == node
        placed._nodes[0] = GONE  # as if Ray had marked actor 0's node dead
        moved = placed.for_replacement(0, "test actor 0")
        assert _bundle(moved)[0] != placed.group.id and _bundle(placed.options(0)) == _bundle(moved)
        assert _node_of(moved) == node  # the one surviving node, which had the room
        # Lost again (its new node too): no surviving node has 4 CPUs free, in one line, in time.
        big = RolePlacement(ray, {"CPU": 0.5}, 1, None, 60, "big actors")
        big.bundle = {"CPU": 4.0}
        big._nodes[0] = GONE
        monkeypatch.setattr(bundles, "MOVE_WAIT_S", 2.0)
        with pytest.raises(RunInterrupted, match=r"^test actor 0's node ffffffffffff is lost and no surviving node "
                                                 r"has \{'CPU': 4.0\} free for it; add a node"):
            big.for_replacement(0, "test actor 0")
        big.remove()
    finally:
        placed.remove()
