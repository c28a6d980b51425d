"""Placement planner: which node of a described cluster hosts each role's resource bundles.

A recipe asks for resources per role (`cluster.rollout_cpus/gpus` per rollout worker,
`cluster.learner_cpus/gpus` per learner rank, `cluster.scorer_cpus` per scorer). This module
checks, before any Ray call or GPU hour, that those requests make sense and fit a cluster
described in TOML (`deploy/clusters/*.toml`): every bundle — one rollout worker, one learner
rank, one scorer — must sit whole on a single node, as a Ray placement-group bundle does.

Bundles are assigned first-fit decreasing, GPU bundles first (they are the scarce, lumpy
resource; CPU-only scorers fill the gaps). GPUs are tracked per device, so fractional bundles
(two roles sharing one GPU) are checked the way Ray assigns them: a fraction never spans devices.

Pure Python, no Ray import. Every aha job places its actors by this plan, for the roles it
starts (`job_roles`): cluster/startup/live_placement.py reads the running cluster into a ClusterSpec,
plans on it and pins each role's placement-group bundles to the planned nodes; `aha plan`
prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cluster.recipe.cluster_spec import (ClusterSpec, ClusterSpecError, NodeSpec, cluster_spec_from_dict,
                                         cluster_spec_from_toml)

__all__ = [
    "Bundle", "ClusterSpec", "ClusterSpecError", "NodePlacement", "NodeSpec", "Placement",
    "PlacementError", "cluster_spec_from_dict", "cluster_spec_from_toml", "describe",
    "job_roles", "plan_placement", "role_bundles",
]

ROLES = ("rollout", "learner", "teacher", "scorer")
_UNIT = {"rollout": "worker", "learner": "rank", "teacher": "teacher", "scorer": "scorer"}
_EPS = 1e-9  # float slack: 0.1 + 0.2 must fit in 0.3
JOBS = ("train", "distill", "sft", "generate", "eval")


class PlacementError(ValueError):
    """A recipe whose roles cannot be placed on the cluster; one line, starting with the role."""



# ---------------------------------------------------------------------------------------
# Bundles: what each role asks for.


@dataclass(frozen=True)
class Bundle:
    """The resources of one actor: rollout worker, learner rank or scorer number `index`."""

    role: str
    index: int
    cpus: float
    gpus: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.role}[{self.index}]"


def _resources(cpus: float, gpus: float) -> str:
    """"2 GPUs and 8 CPUs", or "8 CPUs" when there are no GPUs."""
    cpu_text = f"{cpus:g} CPU{'s' * (cpus != 1)}"
    return f"{gpus:g} GPU{'s' * (gpus != 1)} and {cpu_text}" if gpus else cpu_text


def _check_gpu_requests(recipe) -> None:
    """The GPU requests a recipe type check cannot judge: engine size, device, Ray's rules."""
    cluster, rollout = recipe.cluster, recipe.rollout
    tp, gpus = rollout.tensor_parallel_size, cluster.rollout_gpus
    for role, key, asked in (("rollout", "rollout_gpus", gpus), ("learner", "learner_gpus", cluster.learner_gpus)):
        if cluster.device == "cuda" and asked == 0:
            raise PlacementError(f"{role}: cluster.device is 'cuda' but cluster.{key} is 0")
        if asked > 1 and asked != int(asked):  # Ray refuses e.g. num_gpus=1.5
            raise PlacementError(f"{role}: cluster.{key} = {asked:g}; above 1 it must be a whole number")
    if gpus == 0:
        return
    # A vLLM engine shards over exactly tensor_parallel_size devices, all inside its actor;
    # a fraction (< 1) of one GPU is allowed only for an unsharded engine sharing a device.
    if not (gpus == tp or (tp == 1 and gpus < 1)):
        raise PlacementError(
            f"rollout: cluster.rollout_gpus = {gpus:g} per worker, but a vLLM engine with "
            f"rollout.tensor_parallel_size = {tp} needs exactly {tp} GPU{'s' * (tp != 1)}")
    if gpus < 1 and rollout.kv_cache_gb == 0 and rollout.gpu_memory_utilization > gpus + _EPS:
        raise PlacementError(
            f"rollout: a worker gets {gpus:g} of a GPU but rollout.gpu_memory_utilization = "
            f"{rollout.gpu_memory_utilization:g} lets vLLM take more of its memory than that")


def job_roles(recipe, job: str) -> tuple[str, ...]:
    """The roles the aha command `job` starts for `recipe`: training jobs start them all (a
    teacher only with distill.teacher); SFT starts rollout workers and scorers only to measure
    held-out accuracy (data.eval_path); generate and eval train nothing."""
    if job in ("train", "distill"):
        return ROLES
    if job == "sft":
        return ROLES if recipe.data.eval_path else ("learner",)
    if job in ("generate", "eval"):
        return ("rollout", "scorer")
    raise ValueError(f"unknown job {job!r}; one of {', '.join(JOBS)}")


def role_bundles(recipe, roles: tuple[str, ...] = ROLES) -> list[Bundle]:
    """Every bundle the recipe needs for `roles`, role by role (rollout, learner, teacher when
    distilling, scorer), after checks."""
    _check_gpu_requests(recipe)
    cluster = recipe.cluster
    asks = {
        "rollout": (recipe.rollout.num_workers, cluster.rollout_cpus, cluster.rollout_gpus),
        "learner": (recipe.learner.num_ranks, cluster.learner_cpus, cluster.learner_gpus),
        "teacher": (recipe.distill.num_teachers if recipe.distill.teacher else 0, cluster.teacher_cpus,
                    cluster.teacher_gpus),
        "scorer": (recipe.reward.num_scorers, cluster.scorer_cpus, 0.0),
    }
    return [Bundle(role, i, cpus, gpus) for role in ROLES if role in roles
            for count, cpus, gpus in [asks[role]] for i in range(count)]


# ---------------------------------------------------------------------------------------
# The plan.


@dataclass(frozen=True)
class NodePlacement:
    """One node of the plan: its spec and the bundles it hosts."""

    index: int
    spec: NodeSpec
    bundles: tuple[Bundle, ...] = ()

    @property
    def used_cpus(self) -> float:
        return sum(b.cpus for b in self.bundles)

    @property
    def used_gpus(self) -> float:
        return sum(b.gpus for b in self.bundles)

    @property
    def free_cpus(self) -> float:
        return self.spec.cpus - self.used_cpus

    @property
    def free_gpus(self) -> float:
        return self.spec.gpus - self.used_gpus

    def count(self, role: str) -> int:
        return sum(b.role == role for b in self.bundles)


@dataclass(frozen=True)
class Placement:
    """Where every bundle goes: one NodePlacement per cluster node, in cluster order."""

    nodes: tuple[NodePlacement, ...]

    def bundles(self, role: str | None = None) -> tuple[Bundle, ...]:
        return tuple(b for node in self.nodes for b in node.bundles if role in (None, b.role))

    def node_of(self, role: str, index: int) -> int:
        """The index of the node hosting `role[index]`; KeyError if there is no such bundle."""
        for node in self.nodes:
            if any(b.role == role and b.index == index for b in node.bundles):
                return node.index
        raise KeyError(f"{role}[{index}]")

    def totals(self) -> dict[str, dict[str, float]]:
        """Per role and for "all": count, CPUs and GPUs asked for."""
        out = {}
        for role in (*ROLES, None):
            bundles = self.bundles(role)
            out[role or "all"] = {"count": len(bundles), "cpus": sum(b.cpus for b in bundles),
                                  "gpus": sum(b.gpus for b in bundles)}
        return out


@dataclass
class _Room:
    """What is still free on one node while planning: CPUs and each GPU's free fraction."""

    cpus: float
    devices: list[float] = field(default_factory=list)

    def take(self, bundle: Bundle) -> bool:
        """Reserve `bundle` here if it fits; whole GPUs need idle devices, a fraction one device."""
        if bundle.cpus > self.cpus + _EPS:
            return False
        if bundle.gpus >= 1:
            idle = [i for i, free in enumerate(self.devices) if free >= 1 - _EPS]
            if len(idle) < bundle.gpus:
                return False
            for i in idle[: int(bundle.gpus)]:
                self.devices[i] = 0.0
        elif bundle.gpus > 0:
            fits = [i for i, free in enumerate(self.devices) if free >= bundle.gpus - _EPS]
            if not fits:
                return False
            best = min(fits, key=lambda i: self.devices[i])  # best fit keeps idle devices whole
            self.devices[best] -= bundle.gpus
        self.cpus -= bundle.cpus
        return True


def plan_placement(recipe, cluster: ClusterSpec, roles: tuple[str, ...] = ROLES) -> Placement:
    """Assign every bundle of `recipe`'s `roles` to a node of `cluster`, first-fit decreasing.

    Bundles are taken largest first (GPUs, then CPUs; ties keep the order rollout, learner,
    scorer) and each goes to the first node with room; learner ranks follow
    `cluster.learner_placement` ("strict_pack": all on the first node that holds them all,
    "spread": each on the node with the most idle GPUs, then CPUs). Raises PlacementError, one
    line naming the role, what one of its actors needs and what the cluster has, when a bundle
    fits nowhere.
    """
    bundles = role_bundles(recipe, roles)
    rooms = [_Room(node.cpus, [1.0] * int(node.gpus)) for node in cluster.nodes]
    hosted: list[list[Bundle]] = [[] for _ in cluster.nodes]
    mode = recipe.cluster.learner_placement
    ranks = [b for b in bundles if b.role == "learner"]
    for bundle in sorted(bundles, key=lambda b: (-b.gpus, -b.cpus)):  # sorted() is stable
        if bundle.role == "learner" and mode == "strict_pack":
            if bundle is ranks[0]:  # all ranks at once, on the first node that holds them all
                node = _node_for_all(ranks, rooms)
                if node is None:
                    need = _resources(sum(b.cpus for b in ranks), sum(b.gpus for b in ranks))
                    raise PlacementError(f"learner: cluster.learner_placement = 'strict_pack' needs all {len(ranks)} "
                                         f"ranks ({need}) on one node, and no node has that left")
                hosted[node].extend(ranks)
            continue
        if bundle.role == "learner" and mode == "spread":
            node = _emptiest_node_taking(bundle, rooms)
        else:
            node = next((i for i, room in enumerate(rooms) if room.take(bundle)), None)
        if node is None:
            raise PlacementError(_no_room(bundle, bundles, cluster))
        hosted[node].append(bundle)
    return Placement(tuple(
        NodePlacement(i, spec, tuple(sorted(hosted[i], key=lambda b: (ROLES.index(b.role), b.index))))
        for i, spec in enumerate(cluster.nodes)))


def _node_for_all(bundles: list[Bundle], rooms: list[_Room]) -> int | None:
    """The first node with room for every one of `bundles`, which are then reserved there."""
    for index, room in enumerate(rooms):
        trial = _Room(room.cpus, list(room.devices))
        if all(trial.take(b) for b in bundles):
            rooms[index] = trial
            return index
    return None


def _emptiest_node_taking(bundle: Bundle, rooms: list[_Room]) -> int | None:
    """Reserve `bundle` on the node with the most idle GPUs (then CPUs) that takes it."""
    order = sorted(range(len(rooms)), key=lambda i: (-sum(f >= 1 - _EPS for f in rooms[i].devices), -rooms[i].cpus, i))
    return next((i for i in order if rooms[i].take(bundle)), None)


def _no_room(bundle: Bundle, bundles: list[Bundle], cluster: ClusterSpec) -> str:
    """The one-line reason `bundle` has no node: too big for any node, or the cluster is full."""
    role, unit = bundle.role, _UNIT[bundle.role]
    count = sum(b.role == role for b in bundles)
    need = _resources(bundle.cpus, bundle.gpus)
    nodes = len(cluster.nodes)
    has = f"{nodes} node{'s' * (nodes != 1)} with {_resources(cluster.cpus, cluster.gpus)}"
    if not any(node.cpus + _EPS >= bundle.cpus and node.gpus + _EPS >= bundle.gpus for node in cluster.nodes):
        largest = max(cluster.nodes, key=lambda node: (node.gpus, node.cpus))
        return (f"{role}: one {unit} needs {need} on a single node, but the largest node has "
                f"{_resources(largest.cpus, largest.gpus)} (cluster: {has})")

    def asked(role_name: str | None) -> str:
        chosen = [b for b in bundles if role_name in (None, b.role)]
        return _resources(sum(b.cpus for b in chosen), sum(b.gpus for b in chosen))

    split = ", ".join(f"{r} {asked(r)}" for r in ROLES)
    return (f"{role}: {unit} {bundle.index} of {count} needs {need} on one node but no node has that "
            f"left; the roles need {asked(None)} in all ({split}), the cluster has {has}")


def describe(placement: Placement) -> str:
    """A short table: per node, GPUs and CPUs used of total, memory, and what it hosts."""
    rows = [("node", "GPUs", "CPUs", "mem GB", "hosts")]
    for node in placement.nodes:
        hosts = ", ".join(f"{r} x{node.count(r)}" for r in ROLES if node.count(r)) or "-"
        rows.append((str(node.index), f"{node.used_gpus:g}/{node.spec.gpus:g}",
                     f"{node.used_cpus:g}/{node.spec.cpus:g}", f"{node.spec.memory_gb:g}", hosts))
    t = placement.totals()["all"]
    rows.append(("all", f"{t['gpus']:g}/{sum(n.spec.gpus for n in placement.nodes):g}",
                 f"{t['cpus']:g}/{sum(n.spec.cpus for n in placement.nodes):g}",
                 f"{sum(n.spec.memory_gb for n in placement.nodes):g}", f"{t['count']:g} actors"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4]
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    """`python -m cluster.recipe.placement RECIPE.toml CLUSTER.toml`: print the plan or the one-line error."""
    import sys

    from cluster.recipe import RecipeError, load_recipe

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m cluster.recipe.placement RECIPE.toml CLUSTER.toml", file=sys.stderr)
        return 2
    try:
        print(describe(plan_placement(load_recipe(args[0]), cluster_spec_from_toml(args[1]))))
    except (RecipeError, ClusterSpecError, PlacementError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
