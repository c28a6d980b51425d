"""`aha eval`: held-out evaluation of one or more models, side by side on the same problems.

Each model (a hub id, a local directory, a run's `final/`; by default the recipe's model.path)
is evaluated by `cluster.roles.evaluation.evaluate` — the code the GRPO loop's periodic evaluation
runs — with the recipe's template, rewards and `[eval]` settings, on the first
`eval.num_prompts` rows of `data.eval_path`. The reward scorers are started once; each model
gets a fresh rollout pool (the engines load a model at start), shut down once it is evaluated.
Where the cluster has room for two models' engines, the next model's engines start while this
one is evaluated, so an engine's start (most of a small evaluation) is paid about once, not per
model. Outputs (cluster/output/eval_report.py) are rewritten after each model, so a failure
later on keeps the models already done.

Every check that can fail on the user's input runs before the output directory is claimed and
before Ray starts: a mistake is one line, exit code 2, and nothing written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from cluster.recipe import Recipe, RecipeError, recipe_to_dict


ENGINE_STOP_S = 60.0  # the most a model's engines are given to stop before their actors are killed


@dataclass(frozen=True)
class Target:
    """One model to evaluate: its label (as the user gave it), the path the engines load, and
    the recipe it is evaluated with (the same one, but for the model)."""

    label: str
    path: str
    recipe: Recipe


def default_output_dir(recipe: Recipe) -> Path:
    """Beside the run's own directory: runs/<run.name>-eval, or <run.output_dir>-eval."""
    run_dir = recipe.output_dir
    return run_dir.with_name(run_dir.name + "-eval")


def run_eval(recipe: Recipe, models: list[str], *, out: str | None = None, overwrite: bool = False) -> Path:
    """Evaluate `models` (empty: the recipe's model) and write the outputs; returns the directory."""
    from cluster.output.run_dir import EVAL_OUTPUTS, check_claimable, claim_output_dir
    from cluster.startup.preflight import print_warnings
    from cluster.startup.ray import prepare_while_ray_starts

    targets = _targets(recipe, models)
    out_dir = Path(out) if out else default_output_dir(recipe)
    claim = {"resume": False, "overwrite": overwrite, "outputs": EVAL_OUTPUTS, "key": "--out"}
    targets, rows = _prepare_and_check(recipe, targets)
    check_claimable(out_dir, **claim)  # a directory it may not use: one line, before Ray starts
    (tokenizers, warnings), _ = prepare_while_ray_starts(recipe, lambda: _encode_for_each(recipe, targets, rows))
    print_warnings(warnings)
    with claim_output_dir(out_dir, **claim) as claimed:
        _evaluate_all(recipe, targets, tokenizers, rows, claimed.path)
    return out_dir


def _targets(recipe: Recipe, models: list[str]) -> list[Target]:
    """The models to evaluate. A --model is evaluated with its own tokenizer: model.tokenizer,
    [model.tiny] and [model.pretrain] describe the recipe's model, not it."""
    if not recipe.data.eval_path:
        raise RecipeError("data.eval_path", "aha eval needs a held-out data set: set data.eval_path in the recipe "
                          "or pass --data.eval_path FILE")
    if not models:
        return [Target(label=recipe.model.path, path=recipe.model.path, recipe=recipe)]
    twice = next((m for i, m in enumerate(models) if m in models[:i]), None)
    if twice is not None:
        raise RecipeError("--model", f"'{twice}' is given twice")
    return [Target(label=m, path=m, recipe=replace(recipe, model=replace(recipe.model, path=m, tokenizer="",
                                                                          tiny=None, pretrain=None)))
            for m in models]


def _prepare_and_check(recipe: Recipe, targets: list[Target]):
    """Check what the recipe and each model point at and make the recipe's own inputs exist
    (synthetic data, a tiny model). Returns the targets (the recipe's own model at its prepared
    path) and the held-out rows."""
    from cluster.inputs.prepare import prepare_data, prepare_model
    from cluster.inputs.prompts import load_rows
    from cluster.startup.preflight import check_kv_memory, check_model, check_reward_fields, resolve_rewards

    rewards = resolve_rewards(recipe)
    for target in targets:
        if target.recipe.model.tiny is None:
            check_model(target.recipe, target.path, "--model" if target.recipe is not recipe else "model.path")
    check_kv_memory(recipe)
    prepare_data(recipe)
    if any(target.recipe is recipe for target in targets):
        prepared = str(prepare_model(recipe))  # a [model.tiny] is built, as `aha train` would
        targets = [replace(t, path=prepared) if t.recipe is recipe else t for t in targets]
    rows = load_rows(recipe, recipe.data.eval_path)[: recipe.eval.num_prompts]
    check_reward_fields(recipe, rewards, rows, recipe.data.eval_path)
    return targets, rows


def _encode_for_each(recipe: Recipe, targets: list[Target], rows) -> tuple[dict, list[str]]:
    """Encode the prompts with every model's tokenizer (a prompt too long for one of them fails
    here, not after its engine started), beside Ray's start. Returns the tokenizers by label
    and warning lines."""
    from cluster.inputs.prompts import encode_prompts
    from cluster.startup.preflight import load_tokenizer, tag_warning

    tokenizers, warnings = {}, []
    for target in targets:
        tokenizer = load_tokenizer(target.recipe, target.path)
        encode_prompts(target.recipe, tokenizer, rows)
        tokenizers[target.label] = tokenizer
        warning = tag_warning(target.recipe, tokenizer)
        if warning and warning not in warnings:
            warnings.append(warning)
    return tokenizers, warnings


def _evaluate_all(recipe: Recipe, targets: list[Target], tokenizers: dict, rows, out: Path) -> None:
    """Start the scorers once and, per model, a rollout pool (the next one beside this one's
    evaluation, where two fit); write the outputs after each."""
    from cluster.roles.evaluation import evaluate
    from cluster.startup.ray import connect_ray
    from cluster.output.eval_report import eval_table, write_eval_outputs
    from cluster.startup.live_placement import placement_record
    from cluster.roles.recovery import Recovery
    from cluster.roles.system import start_scorers

    cluster = recipe.cluster
    plan, at_once = _plan(recipe, connect_ray(cluster), len(targets))  # a plan that cannot fit is one line here
    if at_once > 1:
        print("[aha] eval: each next model's engines start while the one before is evaluated", flush=True)
    recovery = Recovery(cluster.max_restarts)  # dead workers and scorers are replaced, as in a training run
    # The scorers boot beside the first model's engines; they are waited for once those are up.
    scorers = start_scorers(recipe, plan, recovery)

    results, records, upcoming = [], [], None
    try:
        upcoming = _start_engines(targets[0], plan, 0, recovery)
        for number, target in enumerate(targets):
            (pool, nodes), upcoming = upcoming, None
            print(f"[aha] eval {number + 1}/{len(targets)}: {target.label} on {len(rows)} held-out problems",
                  flush=True)
            try:
                if at_once > 1 and number + 1 < len(targets):
                    upcoming = _start_engines(targets[number + 1], plan, (number + 1) % at_once, recovery)
                waiting = time.perf_counter()
                pool.wait_started()
                engine_wait_s = time.perf_counter() - waiting  # near 0 where they started beside the model before
                scorers.wait_started()
                placed = placement_record(plan, {"rollout": pool.placement, "scorer": scorers.placement},
                                          planned={"rollout": nodes})
                done = evaluate(pool, scorers, tokenizers[target.label], target.recipe, rows)
            finally:
                _close(pool, cluster.timeout_s)
            results.append({"model": target.label, "path": target.path, "metrics": done.metrics, "placement": placed,
                            "engine_wait_s": round(engine_wait_s, 2)})
            records += [{"model": target.label, **record} for record in done.records]
            write_eval_outputs(out, eval_settings(recipe, len(rows)), results, records)
            print(f"[aha] {target.label}: {_summary(done.metrics)}", flush=True)
    finally:
        if upcoming is not None:  # stopped by an error: the next model's engines are not needed
            _close(upcoming[0], cluster.timeout_s)
        scorers.shutdown()
    print(eval_table(results), flush=True)
    print(f"[aha] done: {out / 'eval.json'}, {out / 'eval.md'}, {out / 'eval.png'}, {out / 'completions.parquet'}",
          flush=True)


def _start_engines(target: Target, plan, share: int, recovery):
    """Start `target`'s rollout pool, not waited for, on share `share` of the plan's rollout
    nodes (0, or 1 for the second of two pools at once); returns it and those nodes."""
    from cluster.roles.system import start_rollout_pool

    workers = target.recipe.rollout.num_workers
    nodes = plan.nodes_of("rollout")[share * workers:(share + 1) * workers]
    return start_rollout_pool(target.recipe, target.path, nodes, recovery), nodes


def _plan(recipe: Recipe, ray, num_models: int):
    """The placement plan and how many models' engines it holds at once. Two, so that the next
    model's engines start while this one is evaluated, when there is a next model and the
    cluster has room for twice the rollout workers, on GPUs of their own (two engines on one
    GPU would each claim its memory) and, on this machine's CPUs, with memory for both KV
    caches. Otherwise one: the models' engines start one after the other."""
    from cluster.startup.live_placement import plan_run
    from cluster.startup.preflight import check_kv_memory
    from cluster.recipe.placement import PlacementError

    gpus = recipe.cluster.rollout_gpus
    if num_models > 1 and not (gpus and gpus != int(gpus)):
        doubled = replace(recipe, rollout=replace(recipe.rollout, num_workers=2 * recipe.rollout.num_workers))
        try:
            check_kv_memory(doubled)
            return plan_run(doubled, ray, "eval"), 2
        except (PlacementError, RecipeError):
            pass  # no room for two: the plan for one, whose own error (if any) is the user's line
    return plan_run(recipe, ray, "eval"), 1


def _close(pool, timeout_s: float) -> None:
    """Stop each engine, its own processes with it, before its actor is killed: a later
    model's engines need that memory. A stop that fails or hangs is reported, not waited out."""
    import ray

    from cluster.roles.calls import get_all

    try:
        get_all(ray, [worker.shutdown.remote() for worker in pool.workers], min(timeout_s, ENGINE_STOP_S),
                "rollout engine shutdown")
    except Exception as err:  # the actors are killed below all the same
        print(f"[aha] stopping the rollout engines: {type(err).__name__}: {err}", flush=True)
    pool.shutdown()


def eval_settings(recipe: Recipe, num_prompts: int) -> dict:
    """What the numbers mean: the data, how many problems, and the [eval] settings used."""
    from cluster.roles.evaluation import correctness_reward

    settings = recipe.eval
    return {"eval_path": recipe.data.eval_path, "num_prompts": num_prompts, "template": recipe.data.template,
            "correctness": correctness_reward(recipe), "k": list(settings.k), "temperature": settings.temperature,
            "budgets": list(settings.budgets), "max_new_tokens": recipe.rollout.max_new_tokens,
            "reward_weights": dict(recipe.reward.weights)}


def evaluation_inputs(recipe: Recipe) -> dict:
    """Every recipe setting an evaluation's numbers depend on, but for the model itself: two
    recipes that agree here measure a model alike (the held-out rows, their template and fields,
    sampling, rewards, the [eval] settings, the engine's dtype)."""
    table = recipe_to_dict(recipe)
    sampling = {key: table["rollout"][key] for key in ("max_new_tokens", "top_p", "top_k", "stop")}  # sampling_spec's
    return {"data": {k: v for k, v in table["data"].items() if k != "train_path"}, "eval": table["eval"],
            "sampling": sampling, "reward": table["reward"], "model_dtype": recipe.model.dtype,
            "reflection_words": list(recipe.run.reflection_words)}


def _summary(metrics: dict) -> str:
    shown = [f"{key.removeprefix('eval/')} {value:.3f}" for key, value in metrics.items()
             if key != "eval/num_prompts" and isinstance(value, (int, float))]
    return ", ".join(shown)

