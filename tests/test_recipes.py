"""Shipped recipes load, validate and fit a described cluster; the placement planner, by hand.

GPU recipes cannot run here, so this is their test: every file in deploy/recipes/ (globbed, so a
new recipe is covered without editing this file) must load through `load_recipe` and have its
roles placed on `deploy/clusters/one-node-8xh100.toml`; CPU recipes on a 2-core node like this one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.recipe import load_recipe
from cluster.recipe.placement import (
    ClusterSpec,
    ClusterSpecError,
    NodeSpec,
    PlacementError,
    cluster_spec_from_dict,
    cluster_spec_from_toml,
    describe,
    main,
    plan_placement,
)
from rewards.registry import resolve_reward

REPO = Path(__file__).resolve().parents[1]
def _is_pipeline(path: Path) -> bool:
    import tomllib

    return "pipeline" in tomllib.loads(path.read_text(encoding="utf-8"))


ALL_RECIPES = sorted((REPO / "deploy" / "recipes").rglob("*.toml"))  # course/ too
RECIPES = [p for p in ALL_RECIPES if not _is_pipeline(p)]  # one job each: aha train, generate, sft, eval
PIPELINES = [p for p in ALL_RECIPES if _is_pipeline(p)]  # aha pipeline: a base recipe and stages
CLUSTERS = REPO / "deploy" / "clusters"
ONE_NODE = CLUSTERS / "one-node-8xh100.toml"
TWO_NODES = CLUSTERS / "two-nodes-8xa100.toml"
TWO_CORES = ClusterSpec((NodeSpec(cpus=2, gpus=0, memory_gb=24),))


def recipe(name: str, *overrides: str):
    return load_recipe(REPO / "deploy" / "recipes" / name, list(overrides))


def is_gpu(r) -> bool:
    return r.cluster.device == "cuda" or r.cluster.rollout_gpus > 0 or r.cluster.learner_gpus > 0


def placement_error(r, cluster: ClusterSpec) -> str:
    with pytest.raises(PlacementError) as info:
        plan_placement(r, cluster)
    message = str(info.value)
    assert "\n" not in message, "a placement error must be one line"
    return message


# ---------------------------------------------------------------- every shipped recipe


def test_the_recipe_folder_has_the_cpu_default_and_the_gpu_recipes():
    names = {path.name for path in RECIPES}
    assert len(RECIPES) >= 5, names
    assert {"arith-zero-cpu.toml", "gsm8k-qwen2.5-0.5b-instruct.toml", "gsm8k-qwen2.5-1.5b.toml",
            "countdown-qwen2.5-3b.toml", "math-dapo.toml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_validates_and_documents_itself(path):
    r = load_recipe(path)
    # The header comment says what it trains, on what hardware, with which data columns.
    assert path.read_text(encoding="utf-8").startswith("# ")
    for name in r.reward.weights:  # a typo in a reward name would only show at run time
        resolve_reward(name)
    assert r.reward.overlong_buffer_tokens < r.rollout.max_new_tokens
    assert all(budget <= r.rollout.max_new_tokens for budget in r.eval.budgets)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_fits_its_described_cluster(path):
    r = load_recipe(path)
    cluster = cluster_spec_from_toml(ONE_NODE) if is_gpu(r) else TWO_CORES
    placement = plan_placement(r, cluster)
    totals = placement.totals()
    assert totals["rollout"]["count"] == r.rollout.num_workers
    assert totals["learner"]["count"] == r.learner.num_ranks
    assert totals["scorer"]["count"] == r.reward.num_scorers
    for node in placement.nodes:
        assert 0 <= node.used_gpus <= node.spec.gpus and 0 <= node.used_cpus <= node.spec.cpus + 1e-9


@pytest.mark.parametrize("path", [p for p in RECIPES if is_gpu(load_recipe(p))], ids=lambda p: p.name)
def test_gpu_recipes_use_the_gpu_settings(path):
    r = load_recipe(path)
    assert r.cluster.device == "cuda" and r.cluster.address == "auto"
    assert r.model.dtype in ("bfloat16", "auto") and r.learner.dtype in ("bfloat16", "auto")
    assert r.cluster.rollout_gpus == r.rollout.tensor_parallel_size
    if r.sft.train_path:  # aha sft: supervised learning rates (open-r1's distillation SFT: 5e-5)
        assert 5e-6 <= r.learner.lr <= 1e-4 and r.learner.warmup_steps > 0
    else:  # RL and on-policy distillation
        assert 1e-6 <= r.learner.lr <= 3e-6
    assert 8 <= r.rollout.group_size <= 16
    if r.distill.teacher:
        assert r.cluster.teacher_gpus >= 1 and r.distill.dtype in ("bfloat16", "auto")


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_recipes_load_and_every_stage_fits_two_cores(path):
    from cluster.recipe.pipeline import load_pipeline

    assert path.read_text(encoding="utf-8").startswith("# ")
    pipeline = load_pipeline(path)
    for stage in pipeline.stages:
        for name in stage.recipe.reward.weights:
            resolve_reward(name)
        assert all(budget <= stage.recipe.rollout.max_new_tokens for budget in stage.recipe.eval.budgets)
        placement = plan_placement(stage.recipe, TWO_CORES)
        assert placement.totals()["learner"]["count"] == stage.recipe.learner.num_ranks


def test_the_r1_recipe_shares_the_demos_base_model():
    """Both CPU demos pre-train into runs/demo/base-model: the same settings, or each run would
    rebuild the other's."""
    from cluster.recipe.pipeline import load_pipeline

    demo, r1 = recipe("arith-zero-cpu.toml"), load_pipeline(REPO / "deploy" / "recipes" / "r1-recipe-cpu.toml").base
    assert (r1.model.path, r1.model.tiny, r1.model.pretrain) == (demo.model.path, demo.model.tiny, demo.model.pretrain)
    assert (r1.data.train_path, r1.data.eval_path, r1.data.template) == (
        demo.data.train_path, demo.data.eval_path, demo.data.template)
    same = ("task", "train_rows", "eval_rows", "seed", "min_terms", "max_terms", "max_term")
    assert [getattr(r1.data.synthetic, k) for k in same] == [getattr(demo.data.synthetic, k) for k in same]
    assert r1.rollout == demo.rollout and r1.reward.weights == demo.reward.weights


# ---------------------------------------------------------------- plans checked by hand


def test_gsm8k_half_node_plan():
    # 2 rollout x (1 GPU, 8 CPUs) + 2 learner x (1 GPU, 8 CPUs) + 2 scorers x 8 CPUs.
    placement = plan_placement(recipe("gsm8k-qwen2.5-0.5b-instruct.toml"), cluster_spec_from_toml(ONE_NODE))
    (node,) = placement.nodes
    assert (node.used_gpus, node.free_gpus, node.used_cpus, node.free_cpus) == (4, 4, 48, 144)
    assert [b.label for b in node.bundles] == ["rollout[0]", "rollout[1]", "learner[0]", "learner[1]",
                                               "scorer[0]", "scorer[1]"]
    assert placement.totals()["all"] == {"count": 6, "cpus": 48, "gpus": 4}
    assert describe(placement).splitlines() == [
        "node  GPUs  CPUs    mem GB  hosts",
        "0     4/8   48/192  2048    rollout x2, learner x2, scorer x2",
        "all   4/8   48/192  2048    6 actors",
    ]


def test_dapo_fills_the_node():
    placement = plan_placement(recipe("math-dapo.toml"), cluster_spec_from_toml(ONE_NODE))
    (node,) = placement.nodes
    assert (node.used_gpus, node.used_cpus) == (8, 96)  # 4+4 GPUs; (4+4+4) x 8 CPUs
    assert (node.count("rollout"), node.count("learner"), node.count("scorer")) == (4, 4, 4)


def test_cpu_default_fills_two_cores_exactly():
    placement = plan_placement(recipe("arith-zero-cpu.toml"), TWO_CORES)
    (node,) = placement.nodes
    assert (node.used_cpus, node.free_cpus, node.used_gpus) == (2.0, 0.0, 0)  # 1 + 0.5 + 0.5


def test_two_nodes_take_the_big_bundles_first():
    # Rollout engines of 2 GPUs (TP 2) go first and fill node 0; the 8 one-GPU learner ranks
    # then only fit on node 1; the scorers (CPU only) go to the first node with CPUs left: 0.
    r = recipe("math-dapo.toml", "--rollout.tensor_parallel_size", "2", "--cluster.rollout_gpus", "2",
               "--learner.num_ranks", "8")
    placement = plan_placement(r, cluster_spec_from_toml(TWO_NODES))
    first, second = placement.nodes
    assert (first.count("rollout"), first.count("learner"), first.count("scorer")) == (4, 0, 4)
    assert (second.count("rollout"), second.count("learner"), second.count("scorer")) == (0, 8, 0)
    assert (first.used_gpus, first.used_cpus, second.used_gpus, second.used_cpus) == (8, 64, 8, 64)
    assert placement.node_of("learner", 7) == 1 and placement.node_of("scorer", 3) == 0
    with pytest.raises(KeyError):
        placement.node_of("learner", 8)


def test_learner_ranks_pack_strictly_or_spread_as_the_recipe_asks():
    # 4 one-GPU ranks, 4 one-GPU workers on two 8-GPU nodes.
    two = cluster_spec_from_toml(TWO_NODES)
    packed = plan_placement(recipe("math-dapo.toml"), two)
    assert [packed.node_of("learner", i) for i in range(4)] == [0, 0, 0, 0]  # first fit: node 0
    spread = plan_placement(recipe("math-dapo.toml", "--cluster.learner_placement", "spread"), two)
    assert [spread.node_of("learner", i) for i in range(4)] == [1, 1, 1, 1]  # node 1 has the most idle GPUs
    # Workers take 6 of node 0's GPUs: 4 ranks no longer fit there together.
    six = ("--rollout.num_workers", "6", "--learner.num_ranks", "4", "--cluster.scorer_cpus", "1")
    first_fit = plan_placement(recipe("math-dapo.toml", *six), two)
    assert [first_fit.node_of("learner", i) for i in range(4)] == [0, 0, 1, 1]  # split over the nodes
    strict = plan_placement(recipe("math-dapo.toml", *six, "--cluster.learner_placement", "strict_pack"), two)
    assert [strict.node_of("learner", i) for i in range(4)] == [1, 1, 1, 1]  # one node, the one with room
    one = cluster_spec_from_toml(ONE_NODE)
    with pytest.raises(PlacementError, match="learner: cluster.learner_placement = 'strict_pack' needs all 4 ranks"):
        plan_placement(recipe("math-dapo.toml", "--rollout.num_workers", "6", "--cluster.learner_placement",
                              "strict_pack"), one)


def test_decreasing_order_lets_a_big_rank_go_first():
    # In role order the two rollout workers would take node 0's GPUs and leave the 24-CPU
    # learner rank nowhere to go; largest first, the rank takes node 0 and a worker moves to 1.
    r = recipe("gsm8k-qwen2.5-0.5b-instruct.toml", "--learner.num_ranks", "1", "--cluster.rollout_cpus", "4",
               "--cluster.learner_cpus", "24", "--reward.num_scorers", "1", "--cluster.scorer_cpus", "4")
    placement = plan_placement(r, ClusterSpec((NodeSpec(cpus=28, gpus=2), NodeSpec(cpus=8, gpus=2))))
    assert [placement.node_of(*b) for b in [("learner", 0), ("rollout", 0), ("rollout", 1), ("scorer", 0)]] \
        == [0, 0, 1, 1]
    assert [(n.used_gpus, n.used_cpus) for n in placement.nodes] == [(2, 28), (1, 8)]


def test_fractional_gpus_share_one_device():
    r = recipe("gsm8k-qwen2.5-0.5b-instruct.toml", "--rollout.num_workers", "1", "--learner.num_ranks", "1",
               "--cluster.rollout_gpus", "0.5", "--cluster.learner_gpus", "0.5",
               "--rollout.gpu_memory_utilization", "0.4")
    placement = plan_placement(r, ClusterSpec((NodeSpec(cpus=32, gpus=1),)))
    assert placement.nodes[0].used_gpus == 1.0


def test_fractions_never_span_devices():
    # 3 x 0.6 GPU is 1.8 <= 2 GPUs, but only one 0.6 share fits on each device (as in Ray).
    r = recipe("gsm8k-qwen2.5-0.5b-instruct.toml", "--rollout.num_workers", "2", "--learner.num_ranks", "1",
               "--cluster.rollout_gpus", "0.6", "--cluster.learner_gpus", "0.6",
               "--rollout.gpu_memory_utilization", "0.5")
    message = placement_error(r, ClusterSpec((NodeSpec(cpus=64, gpus=2),)))
    assert message.startswith("learner: rank 0 of 1 needs 0.6 GPUs and 8 CPUs on one node")


# ---------------------------------------------------------------- requests that cannot be placed


def test_too_many_gpus_names_the_role_that_does_not_fit():
    r = recipe("gsm8k-qwen2.5-0.5b-instruct.toml", "--rollout.num_workers", "4", "--learner.num_ranks", "8")
    message = placement_error(r, cluster_spec_from_toml(ONE_NODE))
    # Rollout workers go first (same size, listed first); learner ranks 0-3 take the last 4 GPUs.
    assert message.startswith("learner: rank 4 of 8 needs 1 GPU and 8 CPUs on one node but no node has that left")
    assert "the roles need 12 GPUs and 112 CPUs in all" in message
    assert message.endswith("the cluster has 1 node with 8 GPUs and 192 CPUs")


def test_a_learner_rank_must_fit_on_one_node():
    # 16 GPUs exist in the cluster, but not on one node.
    r = recipe("math-dapo.toml", "--learner.num_ranks", "1", "--cluster.learner_gpus", "16")
    message = placement_error(r, cluster_spec_from_toml(TWO_NODES))
    assert message == ("learner: one rank needs 16 GPUs and 8 CPUs on a single node, but the largest node "
                       "has 8 GPUs and 96 CPUs (cluster: 2 nodes with 16 GPUs and 192 CPUs)")


def test_a_rollout_engine_must_fit_on_one_node():
    r = recipe("math-dapo.toml", "--rollout.num_workers", "1", "--rollout.tensor_parallel_size", "16",
               "--cluster.rollout_gpus", "16")
    assert placement_error(r, cluster_spec_from_toml(TWO_NODES)).startswith(
        "rollout: one worker needs 16 GPUs and 8 CPUs on a single node, but the largest node has 8 GPUs")


@pytest.mark.parametrize("tp, gpus", [(2, 1), (1, 2), (4, 2)])
def test_rollout_gpus_must_equal_tensor_parallel_size(tp, gpus):
    r = recipe("math-dapo.toml", "--rollout.tensor_parallel_size", str(tp), "--cluster.rollout_gpus", str(gpus))
    message = placement_error(r, cluster_spec_from_toml(ONE_NODE))
    assert message.startswith(f"rollout: cluster.rollout_gpus = {gpus} per worker")
    assert f"rollout.tensor_parallel_size = {tp} needs exactly {tp} GPU" in message


@pytest.mark.parametrize("overrides, start", [
    (("--cluster.rollout_gpus", "0"), "rollout: cluster.device is 'cuda' but cluster.rollout_gpus is 0"),
    (("--cluster.learner_gpus", "0"), "learner: cluster.device is 'cuda' but cluster.learner_gpus is 0"),
    (("--cluster.learner_gpus", "1.5"), "learner: cluster.learner_gpus = 1.5; above 1 it must be a whole number"),
    (("--cluster.rollout_gpus", "0.5"), "rollout: a worker gets 0.5 of a GPU but rollout.gpu_memory_utilization"),
])
def test_gpu_requests_that_make_no_sense(overrides, start):
    message = placement_error(recipe("math-dapo.toml", *overrides), cluster_spec_from_toml(ONE_NODE))
    assert message.startswith(start)


def test_scorers_fill_the_cpus_that_are_left():
    # gsm8k 0.5B: rollout and learner take 32 of 192 CPUs, so exactly 20 scorers of 8 CPUs fit.
    cluster = cluster_spec_from_toml(ONE_NODE)
    full = plan_placement(recipe("gsm8k-qwen2.5-0.5b-instruct.toml", "--reward.num_scorers", "20"), cluster)
    assert full.nodes[0].free_cpus == 0
    message = placement_error(recipe("gsm8k-qwen2.5-0.5b-instruct.toml", "--reward.num_scorers", "21"), cluster)
    assert message.startswith("scorer: scorer 20 of 21 needs 8 CPUs on one node but no node has that left")


def test_cpu_scorers_beyond_two_cores():
    # num_cpus is raised so the local check passes; the described 2-core node is what refuses.
    r = recipe("arith-zero-cpu.toml", "--reward.num_scorers", "3", "--cluster.num_cpus", "8")
    message = placement_error(r, TWO_CORES)
    assert message.startswith("scorer: scorer 1 of 3 needs 0.5 CPUs on one node")
    assert message.endswith("the cluster has 1 node with 2 CPUs")


# ---------------------------------------------------------------- cluster descriptions


def test_shipped_cluster_files():
    one, two = cluster_spec_from_toml(ONE_NODE), cluster_spec_from_toml(TWO_NODES)
    assert one.nodes == (NodeSpec(cpus=192, gpus=8, memory_gb=2048),)
    assert two.nodes == (NodeSpec(cpus=96, gpus=8, memory_gb=1152),) * 2
    assert (two.cpus, two.gpus) == (192, 16)


@pytest.mark.parametrize("table, start", [
    ({}, "nodes: a cluster description needs"),
    ({"nodes": []}, "nodes: expected a non-empty list"),
    ({"nodes": [{"cpus": 8}]}, "nodes[0].gpus: is required"),
    ({"nodes": [{"cpus": 8, "gpu": 8}]}, "nodes[0].gpu: unknown key"),
    ({"nodes": [{"cpus": 8, "gpus": 1.5}]}, "nodes[0].gpus: must be a whole number"),
    ({"nodes": [{"cpus": 8, "gpus": True}]}, "nodes[0].gpus: expected a finite number"),
    ({"nodes": [{"cpus": -1, "gpus": 0}]}, "nodes[0].cpus: must be >= 0"),
    ({"nodes": [{"cpus": 8, "gpus": 0, "count": 0}]}, "nodes[0].count: must be >= 1"),
    ({"nodes": [{"cpus": 8, "gpus": 0}], "head": 1}, "head: unknown key"),
])
def test_bad_cluster_descriptions(table, start):
    with pytest.raises(ClusterSpecError) as info:
        cluster_spec_from_dict(table)
    assert str(info.value).startswith(start)


def test_bad_cluster_files(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[[nodes]\n")
    with pytest.raises(ClusterSpecError, match="is not valid TOML"):
        cluster_spec_from_toml(broken)
    with pytest.raises(ClusterSpecError, match="cannot be read"):
        cluster_spec_from_toml(tmp_path / "missing.toml")
    with pytest.raises(ClusterSpecError, match="nodes"):
        ClusterSpec(())


def test_command_line(capsys):
    assert main([str(REPO / "deploy/recipes/math-dapo.toml"), str(ONE_NODE)]) == 0
    assert "rollout x4, learner x4, scorer x4" in capsys.readouterr().out
    assert main([str(REPO / "deploy/recipes/math-dapo.toml"), str(TWO_NODES / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: cluster file")


def test_the_engine_spec_follows_the_recipe():
    from cluster.startup.specs import engine_spec

    r = recipe("arith-zero-cpu.toml", "--rollout.max_num_seqs", "32",
               "--rollout.weight_sync", "abort", "--run.seed", "5")
    spec = engine_spec(r, r.model.path)
    assert (spec.model_path, spec.max_model_len, spec.kv_cache_gb, spec.enforce_eager) == \
        ("runs/demo/base-model", 128, 0.25, True)
    assert (spec.max_num_seqs, spec.weight_sync, spec.seed) == (32, "abort", 5)
    assert engine_spec(recipe("arith-zero-cpu.toml"), "m").max_num_seqs == 0


def test_the_distillation_demos_distil_the_demos_model_into_a_smaller_student():
    """The teacher is what `make demo` trains; both distillation pipelines share the student
    (one pre-training serves both) and the demo's data, and the student is the smaller model."""
    from cluster.recipe.pipeline import load_pipeline

    demo = recipe("arith-zero-cpu.toml")
    on_policy = load_pipeline(REPO / "deploy" / "recipes" / "distill-cpu.toml")
    off_policy = load_pipeline(REPO / "deploy" / "recipes" / "distill-sft-cpu.toml")
    for pipeline in (on_policy, off_policy):
        base = pipeline.base
        assert base.distill.teacher == str(Path(demo.run.output_dir or f"runs/{demo.run.name}") / "final")
        assert (base.data.train_path, base.data.eval_path, base.data.template) == (
            demo.data.train_path, demo.data.eval_path, demo.data.template)
        assert base.model.tiny.hidden_size * base.model.tiny.num_layers < demo.model.tiny.hidden_size * \
            demo.model.tiny.num_layers
        assert base.eval == on_policy.base.eval and base.model == on_policy.base.model
    kinds = {stage.name: (stage.kind, stage.model_from) for stage in on_policy.stages}
    assert kinds == {"traces": ("generate", "teacher"), "sft": ("sft", "base"), "distill": ("distill", "base"),
                     "rl": ("train", "base")}
    assert [s.definition() for s in off_policy.stages] == [s.definition() for s in on_policy.stages[:2]]
