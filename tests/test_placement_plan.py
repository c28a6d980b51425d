"""The run's placement plan (cluster/startup/live_placement.py) and `aha plan`: clusters named on the
command line, Ray's node table read into a cluster, each actor's node, and the printed plan."""

from pathlib import Path

import pytest

from cluster.cli import main
from cluster.startup.live_placement import RunPlan, _ranges, describe_nodes, label_selectors, live_cluster, parse_cluster
from cluster.recipe import load_recipe
from cluster.recipe.placement import ClusterSpecError, NodeSpec, PlacementError, job_roles, plan_placement

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "deploy/recipes/gsm8k-qwen2.5-1.5b.toml"


def test_cluster_shorthand_and_files():
    assert parse_cluster("2x8").nodes == (NodeSpec(cpus=128, gpus=8),) * 2
    assert parse_cluster("1x0").nodes == (NodeSpec(cpus=16, gpus=0),)
    assert parse_cluster("3x4x48").nodes == (NodeSpec(cpus=48, gpus=4),) * 3
    assert len(parse_cluster(str(REPO / "deploy/clusters/two-nodes-8xa100.toml")).nodes) == 2
    for bad in ("0x8", "2x", "two", "nope.toml"):
        with pytest.raises(ClusterSpecError, match="--cluster"):
            parse_cluster(bad)


class _Ray:
    """Ray's node table as `ray.nodes()` returns it (the one input live_cluster reads)."""

    def __init__(self, nodes):
        self._nodes = nodes

    def nodes(self):
        return self._nodes


def test_the_running_cluster_is_read_head_first_alive_only():
    ray = _Ray([
        {"NodeID": "b" * 8, "Alive": True, "Resources": {"CPU": 96.0, "GPU": 8.0, "memory": 2.0 * 2**30}},
        {"NodeID": "c" * 8, "Alive": False, "Resources": {"CPU": 96.0, "GPU": 8.0}},
        {"NodeID": "a" * 8, "Alive": True, "Resources": {"CPU": 8.0, "node:__internal_head__": 1.0}},
    ])
    spec, ids = live_cluster(ray)
    assert ids == ("a" * 8, "b" * 8)
    assert spec.nodes == (NodeSpec(cpus=8, gpus=0), NodeSpec(cpus=96, gpus=8, memory_gb=2.0))


def test_each_actor_gets_the_node_id_its_bundle_is_planned_on():
    recipe = load_recipe(GSM8K, ["--cluster.scorer_cpus", "4"])
    placement = plan_placement(recipe, parse_cluster("2x4x40"))  # 4 workers, 4 ranks: one node each
    plan = RunPlan(placement, ("head", "gpu-node"))
    assert plan.nodes_of("rollout") == ["head"] * 4 and plan.nodes_of("learner") == ["gpu-node"] * 4
    assert plan.nodes_of("scorer") == ["head", "head"] and plan.nodes_of("teacher") == []  # the CPUs left there
    assert label_selectors(["head", "gpu-node"]) == [{"ray.io/node-id": "head"}, {"ray.io/node-id": "gpu-node"}]
    assert describe_nodes(placement).splitlines() == [
        "node 0: rollout 0-3; scorer 0-1 (free: 0 GPUs, 0 CPUs)",
        "node 1: learner 0-3 (free: 0 GPUs, 8 CPUs)"]
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_aha_plan_prints_the_plan_or_one_line(capsys):
    assert main(["plan", str(GSM8K), "--cluster", "1x8x192"]) == 0
    out = capsys.readouterr().out
    assert "on --cluster 1x8x192" in out
    assert "node 0: rollout 0-3; learner 0-3; scorer 0-1 (free: 0 GPUs, 112 CPUs)" in out
    assert main(["plan", str(GSM8K), "--cluster", "1x4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aha: error: learner: rank 0 of 4 needs 1 GPU and 8 CPUs")
    assert main(["plan", str(GSM8K), "--cluster", "2x"]) == 2
    assert "neither a cluster file nor NxG" in capsys.readouterr().err


def test_each_job_plans_only_the_roles_it_starts(capsys):
    recipe = load_recipe(GSM8K)
    assert job_roles(recipe, "train") == job_roles(recipe, "distill") == ("rollout", "learner", "teacher", "scorer")
    assert job_roles(recipe, "generate") == job_roles(recipe, "eval") == ("rollout", "scorer")
    assert job_roles(recipe, "sft") == ("rollout", "learner", "teacher", "scorer")  # the recipe has data.eval_path
    assert job_roles(load_recipe(GSM8K, ["--data.eval_path", ""]), "sft") == ("learner",)
    with pytest.raises(ValueError, match="unknown job 'export'"):
        job_roles(recipe, "export")
    # Without the learner ranks, the 4 workers and 2 scorers fit a node the whole job does not.
    with pytest.raises(PlacementError, match="^learner: rank 0 of 4"):
        plan_placement(recipe, parse_cluster("1x4x48"))
    placement = plan_placement(recipe, parse_cluster("1x4x48"), job_roles(recipe, "generate"))
    assert [b.role for b in placement.bundles()] == ["rollout"] * 4 + ["scorer"] * 2
    assert main(["plan", str(GSM8K), "--cluster", "1x4x48", "--command", "generate"]) == 0
    out = capsys.readouterr().out
    assert "placement of aha generate" in out and "node 0: rollout 0-3; scorer 0-1 (free: 0 GPUs, 0 CPUs)" in out
    assert main(["plan", str(GSM8K), "--cluster", "1x4x48", "--command", "sft", "--data.eval_path", ""]) == 0
    assert "node 0: learner 0-3 (free: 0 GPUs, 16 CPUs)" in capsys.readouterr().out
