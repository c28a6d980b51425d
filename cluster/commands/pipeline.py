"""`aha pipeline`: named stages in order (sft -> train -> generate -> sft, say), each in its own
directory under the pipeline's output root, each starting from an earlier stage's `final/`.

The recipe and every stage's recipe are checked first (cluster/recipe/pipeline.py), then what
is on disk: a stage is finished when its directory holds the done marker the pipeline writes
after the stage's driver returned (and what the stage makes, `final/` or `traces.parquet`, is
there). A rerun skips finished stages, resumes the interrupted one where its driver can
(its kind's `can_resume` probe in STAGE_COMMANDS: a complete checkpoint, or generate's parts),
and runs the rest; a finished stage whose definition changed is refused in one line before
anything is written. At the end the base model and every stage's model are evaluated side by
side on the held-out set (`aha eval`'s code) and the table and plot are written.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.output.pipeline_report import (PIPELINE_OUTPUTS, clear_stage_done, read_stage_done, write_pipeline_file,
                                            write_stage_done, write_summary)
from cluster.recipe import Recipe, RecipeError, recipe_to_dict
from cluster.recipe.pipeline import BASE, EVAL_DIR, STAGE_KINDS, TEACHER, Pipeline, Stage, StageKind
from cluster.recipe.tables import definition_changes
from cluster.commands.distill import distill
from cluster.commands.generate import earlier_work, generate
from cluster.commands.sft import sft
from cluster.commands.train import train
from cluster.recipe.resume import resume_conflicts


@dataclass(frozen=True)
class Step:
    """What this invocation does with one stage."""

    stage: Stage
    run: bool  # False: skipped, finished before
    resume: bool = False  # continue the interrupted stage
    overwrite: bool = False  # replace what an earlier (interrupted or outdated) attempt left
    why: str = ""  # said on the stage's progress line


def run_pipeline(pipeline: Pipeline, *, overwrite: bool = False, start_from: str | None = None) -> Path:
    """Run `pipeline`'s unfinished stages, then its held-out evaluation; returns its output root.

    `overwrite` runs every stage afresh; `start_from` runs that stage and every later one afresh.
    """
    from cluster.output.run_dir import claim_output_dir

    drivers = {stage.kind: _driver(stage) for stage in pipeline.stages}
    steps = plan(pipeline, overwrite=overwrite, start_from=start_from)  # refusals come before any write
    root = pipeline.output_dir
    created = not root.exists()
    try:
        with claim_output_dir(root, resume=False, overwrite=False, outputs=(), key="pipeline.output_dir"):
            rows = _run_claimed(pipeline, steps, drivers)
    except BaseException:
        _remove_if_only_ours(root, created)
        raise
    shown = f", table {root / 'pipeline.md'}, plot {root / 'pipeline.png'}" if rows else ""
    print(f"[aha] pipeline {pipeline.name} done: {root}{shown}", flush=True)
    return root


def _remove_if_only_ours(root: Path, created: bool) -> None:
    """A root this run created and that holds only the pipeline's own files (the first stage
    stopped before it wrote anything: a bad data file, say) is removed: nothing half-written is
    left behind. Anything else in it (a stage's directory, a base model built there) stays."""
    from cluster.output.run_dir import LOCK_FILE, RUN_MARKER

    if created and root.is_dir() and {p.name for p in root.iterdir()} <= {RUN_MARKER, LOCK_FILE, *PIPELINE_OUTPUTS}:
        shutil.rmtree(root, ignore_errors=True)


def _run_claimed(pipeline: Pipeline, steps: list[Step], drivers: dict) -> list[dict]:
    """Every stage in the claimed output root, then the evaluation and the summary; the rows."""
    root = pipeline.output_dir
    for name in PIPELINE_OUTPUTS:
        (root / name).unlink(missing_ok=True)  # a summary belongs to a finished pipeline
    write_pipeline_file(root, _document(pipeline, status="running"))
    ran = False
    for number, step in enumerate(steps, 1):
        ran |= _run_step(pipeline, step, f"stage {number}/{len(steps)} {step.stage.name} ({step.stage.kind})",
                         drivers[step.stage.kind])
    rows = _evaluate(pipeline, ran) if pipeline.evaluate else []
    if rows:
        print(write_summary(root, rows, num_prompts=_num_prompts(root)), flush=True)
    write_pipeline_file(root, _document(pipeline, status="done", heldout=rows))
    return rows


def _driver(stage: Stage):
    """The command a stage of this kind runs: `run(recipe, *, resume, overwrite) -> Path`."""
    return STAGE_COMMANDS[stage.kind].run


def plan(pipeline: Pipeline, *, overwrite: bool = False, start_from: str | None = None) -> list[Step]:
    """Decide, from the stages' directories, which stages to skip, resume or run. Reads only.

    Once a stage runs, every later one runs too (afresh): its input may have changed.
    """
    names = [s.name for s in pipeline.stages]
    if start_from is not None and start_from not in names:
        raise RecipeError("--from", f"there is no stage '{start_from}' (stages: {', '.join(names)})")
    steps, rerun = [], "--overwrite" if overwrite else ""
    for stage in pipeline.stages:
        if stage.name == start_from and not rerun:
            rerun = f"--from {start_from}"
        done = read_stage_done(stage.output_dir)
        made = (stage.output_dir / stage.spec.product).exists()
        if rerun:  # a stage that never started just starts; one that did is replaced
            steps.append(Step(stage, run=True, overwrite=True, why=f"afresh ({rerun})" if stage.output_dir.exists()
                              else ""))
            continue
        if done is not None and made:
            _check_unchanged(stage, done)
            steps.append(Step(stage, run=False))
            continue
        steps.append(_unfinished(stage, missing=done is not None))
        rerun = f"an earlier stage, {stage.name}, ran again"
    return steps


def _check_unchanged(stage: Stage, done: dict) -> None:
    changes = definition_changes(done.get("definition", {}), _plain(stage.definition()))
    if changes:
        key, old, new = changes[0]
        more = f" (and {len(changes) - 1} more keys)" if len(changes) > 1 else ""
        raise RecipeError(key, f"stage '{stage.name}' finished with {old!r} and the recipe now says {new!r}{more}; "
                          f"to rerun it and the stages after it pass --from {stage.name}, to rerun every stage "
                          "--overwrite, or give the changed stage a new name")


def _unfinished(stage: Stage, *, missing: bool) -> Step:
    """A stage that has not finished: new, interrupted (resumed where its driver can), or one
    whose product was removed after it finished."""
    out = stage.output_dir
    if missing:
        return Step(stage, run=True, overwrite=True, why=f"afresh: its {stage.spec.product} is missing")
    if not out.exists():
        return Step(stage, run=True)
    if not _can_resume(stage):
        return Step(stage, run=True, overwrite=True, why="afresh: it was interrupted with nothing to resume from")
    try:
        saved = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        saved = None  # the driver's own resume checks decide
    changed = resume_conflicts(saved, recipe_to_dict(stage.recipe)) if isinstance(saved, dict) else []
    if changed:
        raise RecipeError(changed[0], f"stage '{stage.name}' was interrupted and resumes only with the recipe it "
                          f"started with ({', '.join(changed[:4])} changed); to start it afresh pass "
                          f"--from {stage.name}, or undo the change")
    return Step(stage, run=True, resume=True, why="resuming where it was interrupted")


def _can_resume(stage: Stage) -> bool:
    """Whether the interrupted stage's directory holds work its driver continues with resume=True
    (the kind's `resumable` probe, cluster/recipe/pipeline.py)."""
    can_resume = STAGE_COMMANDS[stage.kind].can_resume
    return bool(can_resume(stage.output_dir)) if can_resume is not None else False


def has_complete_checkpoint(output_dir: Path) -> bool:
    """The probe of the kinds that resume from checkpoints (train, sft)."""
    from cluster.output.checkpoints import complete_checkpoints

    return bool(complete_checkpoints(Path(output_dir) / "checkpoints"))


def _run_step(pipeline: Pipeline, step: Step, label: str, driver) -> bool:
    """Run (or skip) one stage, marking it finished when its driver returns; True if it ran."""
    stage, prefix = step.stage, f"[aha] pipeline {pipeline.name}: {label}"
    if not step.run:
        print(f"{prefix}: skipped, finished before ({stage.output_dir / stage.spec.product})", flush=True)
        return False
    source = {BASE: "the base model", TEACHER: "the teacher"}.get(stage.model_from, f"stage {stage.model_from}'s model")
    print(f"{prefix}: {step.why or 'starting'}, from {source} ({stage.recipe.model.path}), in {stage.output_dir}",
          flush=True)
    clear_stage_done(stage.output_dir)
    started = time.time()
    try:
        driver(stage.recipe, resume=step.resume, overwrite=step.overwrite)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; the same command resumes it", flush=True)
        raise
    except BaseException:
        print(f"{prefix}: stopped", flush=True)
        raise
    seconds = time.time() - started
    write_stage_done(stage.output_dir, {
        "stage": stage.name, "kind": stage.kind, "product": stage.spec.product, "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "definition": _plain(stage.definition())})
    print(f"{prefix}: finished in {seconds:.0f} s: {stage.output_dir / stage.spec.product}", flush=True)
    return True


def evaluate_stage(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> Path:
    """An `eval` stage: `aha eval` of the stage's model into the stage's directory (an
    interrupted one is evaluated again: its results are the pipeline's own)."""
    from cluster.commands.eval import run_eval

    return run_eval(recipe, [], out=str(recipe.output_dir), overwrite=True)


# ---------------------------------------------------------------------------------------
# The held-out evaluation of the base model and every stage's model, side by side.


def _evaluate(pipeline: Pipeline, ran: bool) -> list[dict]:
    """Evaluate (unless nothing changed since the last evaluation) and return the summary rows."""
    out = pipeline.output_dir / EVAL_DIR
    models = [(BASE, "base model", None)] + ([(TEACHER, "teacher", None)] if pipeline.base.distill.teacher else [])
    models += [(s.name, s.kind, s) for s in pipeline.stages if s.spec.makes_model]
    wanted = _plain({"base": _base_definition(pipeline.base),
                     "models": [[name, stage.definition() if stage else None] for name, _, stage in models]})
    done = read_stage_done(out)
    prefix = f"[aha] pipeline {pipeline.name}: held-out evaluation of {len(models)} models"
    if not ran and done is not None and done.get("definition") == wanted and (out / "eval.json").is_file():
        print(f"{prefix}: skipped, done before ({out / 'eval.json'})", flush=True)
    else:
        print(f"{prefix} ({', '.join(name for name, _, _ in models)}), in {out}", flush=True)
        clear_stage_done(out)
        paths = _evaluate_models(pipeline, [stage for _, _, stage in models if stage is not None], out)
        write_stage_done(out, {"stage": EVAL_DIR, "kind": "eval", "product": "eval.json", "models": paths,
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "definition": wanted})
    results = json.loads((out / "eval.json").read_text(encoding="utf-8"))["models"]
    return [{"stage": name, "kind": kind, "model": result["path"], "metrics": result["metrics"],
             "from": stage.model_from if stage is not None else None}
            for (name, kind, stage), result in zip(models, results, strict=True)]


def _evaluate_models(pipeline: Pipeline, stages: list[Stage], out: Path) -> list[str]:
    """eval.json and completions.parquet of the base model, the teacher (a pipeline with a
    distill.teacher) and `stages`' models, in that order.

    A model its stage already evaluated with the pipeline's own evaluation settings (the same
    `evaluate` on the same rows, after the stage's last step, or before its first for the base
    model) is taken from that stage's metrics and heldout/ records; the others are evaluated
    now by `aha eval`'s code. Returns the models' paths."""
    from cluster.commands.eval import eval_settings, run_eval
    from cluster.inputs.prepare import prepare_data, prepare_model
    from cluster.output.eval_report import write_eval_outputs
    from cluster.output.run_dir import EVAL_OUTPUTS, claim_output_dir

    prepare_data(pipeline.base)
    base_path = str(prepare_model(pipeline.base))  # built by the first stage; reused, not rebuilt
    teacher = [pipeline.base.distill.teacher] if pipeline.base.distill.teacher else []
    stage_paths = [str(stage.output_dir / stage.spec.product) for stage in stages]
    paths = [base_path, *teacher, *stage_paths]
    measured = [_measured_base(pipeline, base_path)] + [None] * len(teacher)  # the teacher: evaluated here
    measured += [_measured_at(pipeline, stage, path, first=False) for stage, path in zip(stages, stage_paths)]
    for path, found in zip(paths, measured):
        said = f"measured by stage {found[2]}" if found else "evaluating it now"
        print(f"[aha]   {path}: {said}", flush=True)
    fresh = [path for path, found in zip(paths, measured) if found is None]
    if fresh:
        run_eval(pipeline.base, fresh, out=str(out), overwrite=True)
        document = json.loads((out / "eval.json").read_text(encoding="utf-8"))
        evaluated = {r["path"]: (r, _records_of(out, r["model"])) for r in document["models"]}
    results, records = [], []
    for path, found in zip(paths, measured):
        result, kept = ({"model": path, "path": path, "metrics": found[0]}, found[1]) if found else evaluated[path]
        results.append({**result, "measured_by": found[2] if found else "aha eval"})
        records += kept
    num_prompts = len({r["prompt_index"] for r in records if r["model"] == paths[0]})
    with claim_output_dir(out, resume=False, overwrite=True, outputs=EVAL_OUTPUTS, key="pipeline evaluation"):
        write_eval_outputs(out, eval_settings(pipeline.base, num_prompts), results, records)
    return paths


def _measured_base(pipeline: Pipeline, base_path: str):
    """(metrics, records, by whom) of the base model from a stage that evaluated it before its
    first step, or None."""
    for stage in pipeline.stages:
        if stage.model_from == BASE and stage.spec.makes_model:
            found = _measured_at(pipeline, stage, base_path, first=True)
            if found is not None:
                return found
    return None


def _measured_at(pipeline: Pipeline, stage: Stage, path: str, *, first: bool):
    """The stage's evaluation before its first step (`first`) or after its last, as (metrics,
    records relabelled as `path`'s, a label), when it was made with the pipeline's evaluation
    settings and its records were kept; else None."""
    from cluster.commands.eval import evaluation_inputs
    from cluster.output.eval_report import read_step_records
    from cluster.output.run_log import read_metrics

    if evaluation_inputs(stage.recipe) != evaluation_inputs(pipeline.base):
        return None
    try:
        steps = read_metrics(stage.output_dir)
    except ValueError:  # a damaged metrics file is not trusted: evaluate again
        return None
    if not steps:
        return None
    record = steps[0] if first else steps[-1]  # before the first step, or after the last one
    if "eval/accuracy" not in record or (first and record["step"] != 0):
        return None
    records = read_step_records(stage.output_dir, record["step"], path)
    if records is None:
        return None
    metrics = {k: v for k, v in record.items() if k.startswith("eval/") and k != "eval/loss"}
    when = "before its first step" if first else f"after its step {record['step']}"
    return metrics, records, f"{stage.name}, {when}"


def _records_of(out: Path, model: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for r in pq.read_table(out / "completions.parquet").to_pylist() if r["model"] == model]


def _base_definition(base: Recipe) -> dict:
    table = recipe_to_dict(base)
    table.pop("run", None)
    return table


def _num_prompts(root: Path):
    try:
        return json.loads((root / EVAL_DIR / "eval.json").read_text(encoding="utf-8"))["settings"]["num_prompts"]
    except (OSError, KeyError, ValueError):
        return None


def _document(pipeline: Pipeline, *, status: str, heldout: list | None = None) -> dict:
    return {
        "name": pipeline.name, "status": status,
        "stages": [{"name": s.name, "kind": s.kind, "model_from": s.model_from, "traces_from": s.traces_from,
                    "output_dir": str(s.output_dir), "model_path": s.recipe.model.path} for s in pipeline.stages],
        "heldout": heldout or [],
    }


def _plain(value):
    """As it reads back from JSON (tuples as lists), so a saved definition compares equal."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class StageCommand:
    """What a stage kind runs: the command's own function, and the probe of an interrupted
    stage's directory that says whether `run(..., resume=True)` continues it (None: it starts
    again)."""

    run: Callable[..., Path]
    can_resume: Callable[[Path], object] | None = None


# One entry per kind of cluster/recipe/pipeline.py's STAGE_KINDS: a new kind is a command and a line here.
STAGE_COMMANDS = {
    "train": StageCommand(train, has_complete_checkpoint),
    "generate": StageCommand(generate, earlier_work),
    "sft": StageCommand(sft, has_complete_checkpoint),
    "distill": StageCommand(distill, has_complete_checkpoint),
    "eval": StageCommand(evaluate_stage),
}

__all__ = ["STAGE_COMMANDS", "STAGE_KINDS", "StageKind", "Step", "evaluate_stage", "plan", "run_pipeline"]
