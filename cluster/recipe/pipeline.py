"""Pipeline recipes (`aha pipeline`): named stages run in order, each a full recipe.

A pipeline recipe is a normal recipe (the *base*: `[model]`, `[data]`, `[rollout]`, ...) plus

    [pipeline]
    name = "r1"                  # output root runs/<name>/ unless output_dir is given
    stages = ["cold_start", "rl", "rejection", "sft2"]
    [stages.rl]
    kind = "train"               # a key of STAGE_KINDS
    run.steps = 40               # overrides of any recipe key, for this stage only
    [stages.sft2]
    kind = "sft"
    model_from = "rl"            # default: the nearest earlier stage that makes a model, else "base"
    traces_from = "rejection"    # sft.train_path := that generate stage's traces file

Each stage's recipe is the base with the stage's overrides, validated like any recipe, with
`run.output_dir = <output root>/<stage>` and, for a stage starting from an earlier one,
`model.path = <that stage's directory>/final` (without the base's `[model.tiny]`,
`[model.pretrain]` and `model.tokenizer`, which describe the base model). Everything here is
checked before anything runs: a mistake in the last stage is one line in the first second.

Pure and light like the rest of cluster.recipe: no torch, ray, vllm, no other part of the project.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from cluster.recipe.checks import _RUN_NAME, RecipeError, key_text
from cluster.recipe.load import apply_override, parse_overrides, read_recipe_table, recipe_from_dict, recipe_to_dict
from cluster.recipe.schema import Recipe
from cluster.recipe.tables import lookup, with_overrides

BASE = "base"  # model_from: the base recipe's model
TEACHER = "teacher"  # model_from: the base recipe's distill.teacher (a model from outside the pipeline)
FINAL_DIR = "final"  # what a model-making stage leaves (cluster/output/run_dir.py's FINAL_DIR)
TRACES_FILE = "traces.parquet"  # what a generate stage leaves
EVAL_DIR = "eval"  # <output root>/eval: the held-out evaluation of every stage's model


@dataclass(frozen=True)
class StageKind:
    """What a kind of stage leaves in its output directory for the stages after it. The command
    each kind runs is registered beside the commands, in cluster/commands/pipeline.py
    (`STAGE_COMMANDS`, one entry per kind here: a test holds the two to the same names)."""

    product: str  # the file or directory whose presence (with the done marker) means finished
    makes_model: bool = False  # ends with final/: a later stage's model, evaluated at the end
    makes_traces: bool = False  # writes traces.parquet: a later stage's traces_from
    reads_traces: bool = False  # trains on traces: sft.train_path, or traces_from


STAGE_KINDS = {
    "train": StageKind(FINAL_DIR, makes_model=True),
    "generate": StageKind(TRACES_FILE, makes_traces=True),
    "sft": StageKind(FINAL_DIR, makes_model=True, reads_traces=True),
    "distill": StageKind(FINAL_DIR, makes_model=True),
    "eval": StageKind("eval.json"),
}
PIPELINE_KEYS = ("name", "output_dir", "stages", "evaluate")
STAGE_KEYS = ("kind", "model_from", "traces_from")  # besides recipe sections
RESERVED_NAMES = (BASE, TEACHER, EVAL_DIR)
# Keys the pipeline sets in every stage's recipe; a stage (or the base) may not set them itself.
DERIVED = {
    "run.output_dir": "the pipeline puts each stage in <pipeline output>/<stage>: set pipeline.output_dir instead",
    "run.name": "each stage's run is named after the stage",
}
# [model] keys that describe the base model: set once, in the base recipe.
BASE_MODEL_KEYS = ("path", "tokenizer", "tiny", "pretrain")


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    recipe: Recipe  # the base with this stage's overrides, its paths set by the pipeline
    model_from: str  # BASE, TEACHER or an earlier stage's name
    traces_from: str  # "" or an earlier generate stage's name
    overrides: dict  # the stage's own recipe keys, as written

    @property
    def output_dir(self) -> Path:
        return self.recipe.output_dir

    @property
    def spec(self) -> StageKind:
        return STAGE_KINDS[self.kind]

    def definition(self) -> dict:
        """What the stage's result depends on, with the paths the pipeline derives written as
        references to the stages they come from (so a moved pipeline directory is the same)."""
        table = recipe_to_dict(self.recipe)
        table["run"].pop("output_dir", None)
        table["run"].pop("name", None)
        if self.model_from not in (BASE, TEACHER):
            table["model"]["path"] = f"<stage {self.model_from}>/{FINAL_DIR}"
        if self.traces_from:
            table["sft"]["train_path"] = f"<stage {self.traces_from}>/{TRACES_FILE}"
        return {"kind": self.kind, "model_from": self.model_from, "traces_from": self.traces_from, "recipe": table}


@dataclass(frozen=True)
class Pipeline:
    name: str
    output_dir: Path
    base: Recipe  # the base model and the held-out evaluation of every stage's model
    stages: tuple[Stage, ...]
    evaluate: bool  # evaluate the base and every model-making stage's final/ at the end


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    """Read a pipeline recipe; `overrides` (`--section.key value`) apply to the base recipe."""
    file = Path(path)
    table = read_recipe_table(file)
    own, rest = _pipeline_overrides(list(overrides))
    for dotted, value in parse_overrides(rest):
        apply_override(table, dotted, value)
    if own:
        settings = table.get("pipeline")
        table["pipeline"] = {**(settings if isinstance(settings, dict) else {}), **own}
    return pipeline_from_dict(table, default_name=file.stem)


def _pipeline_overrides(args: list[str]) -> tuple[dict, list[str]]:
    """Split `--pipeline.<key> value` (or `=value`) off the base recipe's overrides: the name
    and output_dir verbatim, evaluate as true/false, stages as a comma-separated list."""
    own, rest, i = {}, [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--pipeline."):
            rest.append(arg)
            i += 1
            continue
        key, sep, raw = arg[len("--pipeline."):].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise RecipeError(f"pipeline.{key}", "override has no value")
            raw, i = args[i + 1], i + 1
        if key not in PIPELINE_KEYS:
            raise RecipeError(f"pipeline.{key_text(key)}", f"unknown key (known: {', '.join(PIPELINE_KEYS)})")
        if key == "evaluate":
            if raw not in ("true", "false"):
                raise RecipeError("pipeline.evaluate", f"expected true or false, got {raw!r}")
            own[key] = raw == "true"
        else:
            own[key] = [name.strip() for name in raw.split(",") if name.strip()] if key == "stages" else raw
        i += 1
    return own, rest


def pipeline_from_dict(table: dict, *, default_name: str = "pipeline") -> Pipeline:
    """Build and check a Pipeline from a parsed pipeline recipe; RecipeError (one line) if it is wrong."""
    table = dict(table)
    settings, stage_tables = table.pop("pipeline", None), table.pop("stages", None)
    if not isinstance(settings, dict):
        raise RecipeError("pipeline", "a pipeline recipe needs a [pipeline] table with stages = [...] "
                          "(a single-stage recipe is for aha train, generate, sft or eval)")
    name, output_dir, names, evaluate = _pipeline_settings(settings, default_name)
    root = Path(output_dir or f"runs/{name}")
    tables = _stage_tables(stage_tables, names)
    for key, reason in DERIVED.items():
        if lookup(table, key) is not None:
            raise RecipeError(key, f"is not for a pipeline's base recipe: {reason}")
    base = recipe_from_dict(with_overrides(table, {"run": {"name": name, "output_dir": str(root / EVAL_DIR)}}))
    if evaluate and not base.data.eval_path:
        raise RecipeError("data.eval_path", "the pipeline evaluates every stage's model on held-out problems: set "
                          "data.eval_path in the base recipe, or pipeline.evaluate = false")
    stages: list[Stage] = []
    for i, stage in enumerate(names):
        stages.append(_stage(stage, tables[stage], table, root, stages, later=names[i + 1:]))
    return Pipeline(name=name, output_dir=root, base=base, stages=tuple(stages), evaluate=evaluate)


def _pipeline_settings(settings: dict, default_name: str):
    for key in settings:
        if key not in PIPELINE_KEYS:
            raise RecipeError(f"pipeline.{key_text(key)}", f"unknown key (known: {', '.join(PIPELINE_KEYS)})")
    name = _typed(settings, "name", str, "pipeline", default_name)
    if not _RUN_NAME.fullmatch(name):
        raise RecipeError("pipeline.name", f"{name!r} must be letters, digits, '.', '_' or '-'")
    output_dir = _typed(settings, "output_dir", str, "pipeline", "")
    evaluate = _typed(settings, "evaluate", bool, "pipeline", True)
    names = settings.get("stages")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RecipeError("pipeline.stages", "must be a list of stage names, in the order they run")
    if not names:
        raise RecipeError("pipeline.stages", "is empty: list the stages in the order they run")
    for i, stage in enumerate(names):
        if stage in names[:i]:
            raise RecipeError("pipeline.stages", f"'{key_text(stage)}' is listed twice; every stage needs its own name")
        if not _RUN_NAME.fullmatch(stage):
            raise RecipeError("pipeline.stages", f"stage name {stage!r} must be letters, digits, '.', '_' or '-' "
                              "(it is the stage's directory)")
        if stage in RESERVED_NAMES:
            raise RecipeError("pipeline.stages", f"'{stage}' is reserved ({', '.join(RESERVED_NAMES)}): "
                              "choose another stage name")
    return name, output_dir, names, evaluate


def _stage_tables(stage_tables, names: list[str]) -> dict[str, dict]:
    if stage_tables is None:
        stage_tables = {}
    if not isinstance(stage_tables, dict):
        raise RecipeError("stages", "must hold one table per stage: [stages.<name>] with kind = ...")
    for name in stage_tables:
        if name not in names:
            raise RecipeError(f"stages.{key_text(name)}", f"is not in pipeline.stages ({', '.join(names)}): "
                              "list it there or remove the table")
    for name in names:
        if not isinstance(stage_tables.get(name), dict):
            raise RecipeError(f"stages.{name}", f"is listed in pipeline.stages but has no [stages.{name}] table "
                              f"(it needs at least kind = one of {', '.join(STAGE_KINDS)})")
    return stage_tables


def _stage(name: str, table: dict, base: dict, root: Path, earlier: list[Stage], *, later: list[str]) -> Stage:
    prefix = f"stages.{name}"
    kind = table.get("kind")
    if not isinstance(kind, str) or kind not in STAGE_KINDS:
        shown = "is missing" if kind is None else f"is {kind!r}"
        raise RecipeError(f"{prefix}.kind", f"{shown}; it must be one of {', '.join(map(repr, STAGE_KINDS))}")
    spec = STAGE_KINDS[kind]
    overrides = {k: v for k, v in table.items() if k not in STAGE_KEYS}
    sections = [f.name for f in dataclasses.fields(Recipe)]
    for key, value in overrides.items():
        if key not in sections:
            raise RecipeError(f"{prefix}.{key_text(key)}", f"unknown key (stage keys: {', '.join(STAGE_KEYS)}; "
                              f"recipe sections: {', '.join(sections)})")
        if not isinstance(value, dict):
            raise RecipeError(f"{prefix}.{key}", f"expected a table of {key} keys, got {type(value).__name__}")
    for key, reason in DERIVED.items():
        if lookup(overrides, key) is not None:
            raise RecipeError(f"{prefix}.{key}", f"is set by the pipeline: {reason}")
    for key in BASE_MODEL_KEYS:
        if lookup(overrides, f"model.{key}") is not None:
            raise RecipeError(f"{prefix}.model.{key}", "describes the base model, which is set once in the base "
                              "recipe's [model]; a stage starts from it or from an earlier stage (model_from)")
    teacher = lookup(base, "distill.teacher") or ""
    model_from = _reference(table, "model_from", name, earlier, later, default=_default_model_from(earlier),
                            teacher=teacher)
    if model_from not in (BASE, TEACHER) and not earlier_stage(earlier, model_from).spec.makes_model:
        source = earlier_stage(earlier, model_from)
        raise RecipeError(f"{prefix}.model_from", f"stage '{model_from}' is a {source.kind} stage and makes no model "
                          "(a model comes from a stage that trains, or from \"base\")")
    traces_from = _reference(table, "traces_from", name, earlier, later, default="")
    if traces_from:
        _check_traces_from(prefix, kind, spec, traces_from, overrides, earlier)
    derived: dict = {"run": {"name": name, "output_dir": str(root / name)}}
    merged = with_overrides(base, overrides)
    if model_from != BASE:  # the base's model-building tables would build the base model at the new path
        merged["model"] = {k: v for k, v in merged.get("model", {}).items() if k not in BASE_MODEL_KEYS}
        derived["model"] = {"path": teacher if model_from == TEACHER else str(root / model_from / FINAL_DIR)}
    if kind != "distill":  # the base's teacher is for distill stages (and model_from = "teacher") only
        derived["distill"] = {"teacher": ""}
    elif not lookup(merged, "distill.teacher"):
        raise RecipeError(f"{prefix}.distill.teacher", "a distill stage needs a teacher: set distill.teacher in the "
                          "base recipe or in the stage")
    if traces_from:
        derived["sft"] = {"train_path": str(root / traces_from / TRACES_FILE)}
    try:
        recipe = recipe_from_dict(with_overrides(merged, derived))
    except RecipeError as err:
        if lookup(overrides, err.key.split("[")[0]) is not None:  # eval.k[0]: the list eval.k
            raise RecipeError(f"{prefix}.{err.key}", err.problem) from None
        raise RecipeError(err.key, f"{err.problem} (in stage '{name}')") from None
    if spec.reads_traces and not recipe.sft.train_path:
        raise RecipeError(f"{prefix}.traces_from", f"a {kind} stage trains on traces: name a generate stage "
                          "(traces_from = \"...\") or set sft.train_path")
    return Stage(name=name, kind=kind, recipe=recipe, model_from=model_from, traces_from=traces_from,
                 overrides=overrides)


def _default_model_from(earlier: list[Stage]) -> str:
    """The nearest earlier stage that makes a model, else the base model."""
    return next((s.name for s in reversed(earlier) if s.spec.makes_model), BASE)


def _reference(table: dict, key: str, this: str, earlier: list[Stage], later: list[str], *, default: str,
               teacher: str = "") -> str:
    """A stage named by `key` (model_from, traces_from): it must be an earlier stage (or, for
    model_from, "base", or "teacher" when the base recipe names a distill.teacher)."""
    prefix = f"stages.{this}"
    if key not in table:
        return default
    value = table[key]
    if not isinstance(value, str):
        raise RecipeError(f"{prefix}.{key}", f"expected a stage name, got {type(value).__name__} {value!r}")
    if value == BASE and key == "model_from":
        return value
    if value == TEACHER and key == "model_from":
        if not teacher:
            raise RecipeError(f"{prefix}.{key}", "'teacher' is the base recipe's distill.teacher, which is not set")
        return value
    if any(s.name == value for s in earlier):
        return value
    if value == this:
        raise RecipeError(f"{prefix}.{key}", "names the stage itself; it must name an earlier stage")
    if value in later:
        raise RecipeError(f"{prefix}.{key}", f"stage '{value}' comes after '{this}' in pipeline.stages; "
                          "a stage starts from an earlier one")
    known = [s.name for s in earlier] + ([BASE] if key == "model_from" else [])
    raise RecipeError(f"{prefix}.{key}", f"there is no stage '{key_text(value)}' before '{this}' "
                      f"(it can name: {', '.join(known) or 'no stage yet'})")


def _check_traces_from(prefix: str, kind: str, spec: StageKind, traces_from: str, overrides: dict,
                       earlier: list[Stage]) -> None:
    if not spec.reads_traces:
        raise RecipeError(f"{prefix}.traces_from", f"a {kind} stage does not train on traces; only "
                          f"{', '.join(k for k, s in STAGE_KINDS.items() if s.reads_traces)} stages take traces_from")
    if not earlier_stage(earlier, traces_from).spec.makes_traces:
        raise RecipeError(f"{prefix}.traces_from", f"stage '{traces_from}' is a "
                          f"{earlier_stage(earlier, traces_from).kind} stage and writes no traces (a generate stage does)")
    if lookup(overrides, "sft.train_path") is not None:
        raise RecipeError(f"{prefix}.sft.train_path", f"is set from traces_from = '{traces_from}'; give one of the two")


def earlier_stage(stages: list[Stage], name: str) -> Stage:
    return next(s for s in stages if s.name == name)


def _typed(table: dict, key: str, tp: type, section: str, default):
    value = table.get(key, default)
    if type(value) is not tp:
        raise RecipeError(f"{section}.{key}", f"expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value
