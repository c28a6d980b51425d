"""`aha generate`: rejection sampling of verified traces.

The rollout workers sample `generate.samples_per_prompt` completions of each of the first
`generate.num_prompts` rows of data.train_path (rendered with data.template, sampled with the
rollout.* settings), the reward scorers grade them, and the completions the correctness reward
gives 1.0 are kept by the `generate.keep` policy (cluster/output/rejection.py). The result is a
trace data set (docs/commands.md) that `aha sft` reads: `prompt` + `completion` and
`messages`, with the reward components, token counts and the model that wrote them.

It writes as it goes, a chunk of `generate.chunk_prompts` prompts at a time
(cluster/output/trace_parts.py), keeping the next chunk generating while one is scored and
written: a killed run keeps every finished chunk, and `--resume` samples only the prompts not
yet done. Every check that can fail on the user's input runs before the output directory is
claimed: a mistake is one line, exit code 2, and nothing written there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cluster.inputs.data import PromptRow
from cluster.output.run_dir import RunDirError
from cluster.recipe import Recipe, recipe_to_dict
from cluster.roles.scoring import ScoredGroup

LOOKAHEAD_CHUNKS = 1  # chunks generating beyond the one being finished: the engines never wait on a write


@dataclass
class Inputs:
    """What the checks established: the model the engines load, its tokenizer, the rows."""

    model_path: str
    tokenizer: object
    rows: list[PromptRow]
    warnings: list[str]


def generate(recipe: Recipe, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Sample, verify and keep traces of `recipe`'s prompts into recipe.output_dir; returns it.
    `resume` continues an interrupted run there; `overwrite` replaces an earlier one."""
    from cluster.inputs.prepare import prepare_data, prepare_model
    from cluster.output.run_dir import GENERATE_OUTPUTS, check_claimable, claim_output_dir
    from cluster.startup.preflight import check_before_start, print_warnings, require_prompt_file
    from cluster.startup.ray import prepare_while_ray_starts

    require_prompt_file(recipe, trains=False)  # it only samples: greedy decoding is for it to choose
    warnings = check_before_start(recipe)
    out = recipe.output_dir
    claim = {"resume": resume, "overwrite": overwrite, "outputs": GENERATE_OUTPUTS, "progress": earlier_work}
    _refuse_other_jobs(out)
    check_claimable(out, **claim)  # a directory it may not use: one line, before Ray starts
    prepare_data(recipe)
    model_path = str(prepare_model(recipe))
    inputs, _ = prepare_while_ray_starts(recipe, lambda: _check_prepared(recipe, model_path, warnings))
    print_warnings(inputs.warnings)
    with claim_output_dir(out, **claim) as run_dir:
        _generate(recipe, inputs, run_dir.path, resume)
    return out


def _check_prepared(recipe: Recipe, model_path: str, warnings: list[str]) -> Inputs:
    """Check the made inputs as the engines will see them (prompts within
    data.max_prompt_tokens, reward fields); beside Ray's start."""
    from cluster.inputs.data import DataError
    from cluster.inputs.prompts import load_rows
    from cluster.startup.preflight import check_prepared, load_tokenizer

    tokenizer = load_tokenizer(recipe, model_path)
    warnings = warnings + check_prepared(recipe, model_path, tokenizer)
    rows = load_rows(recipe, recipe.data.train_path)
    if not rows:  # load_rows refuses an empty file; kept here as the driver's own precondition
        raise DataError(f"data file '{recipe.data.train_path}': the dataset has no rows")
    return Inputs(model_path, tokenizer, rows[: recipe.generate.num_prompts or None], warnings)


def _refuse_other_jobs(out: Path) -> None:
    """A training run's directory is not generate's to write into (its recipe.json is the run's)."""
    from cluster.output.run_dir import FINAL_DIR, RUN_MARKER
    from cluster.output.run_log import METRICS_FILE

    found = [name for name in (METRICS_FILE, "checkpoints", FINAL_DIR) if (out / name).exists()]
    if (out / RUN_MARKER).is_file() and found:
        raise RunDirError(f"run.output_dir: '{out}' holds a training run ({', '.join(found)}); aha generate writes "
                          "its traces into a directory of its own: choose another run.output_dir or run.name")


def earlier_work(out: Path) -> str:
    """What an earlier generate run left in `out` ("" for nothing): claim_output_dir's `progress`."""
    from cluster.output.trace_parts import TRACES_FILE, finished_prompts

    done = finished_prompts(out)
    if (out / TRACES_FILE).is_file():
        return f"aha generate's {TRACES_FILE}, {done or 0} prompts done"
    return f"an unfinished aha generate, {done} prompts done" if done else ""


def settings(recipe: Recipe) -> dict:
    """What decides the traces: model, prompts, sampling, rewards, policy. A resumed run must
    have the same; summary.json records them."""
    from cluster.roles.evaluation import correctness_reward

    model, data, rollout, reward, gen = recipe.model, recipe.data, recipe.rollout, recipe.reward, recipe.generate
    return {
        "teacher": model.path, "tokenizer": model.tokenizer, "train_path": data.train_path,
        "prompt_column": data.prompt_column, "columns": dict(data.columns), "template": data.template,
        "system_prompt": data.system_prompt, "samples_per_prompt": gen.samples_per_prompt,
        "max_new_tokens": rollout.max_new_tokens, "temperature": rollout.temperature, "top_p": rollout.top_p,
        "top_k": rollout.top_k, "stop": list(rollout.stop), "reward_weights": dict(reward.weights),
        "failure_reward": reward.failure_reward, "overlong_buffer_tokens": reward.overlong_buffer_tokens,
        "overlong_penalty": reward.overlong_penalty, "correctness": correctness_reward(recipe), "keep": gen.keep,
        "max_per_prompt": gen.max_per_prompt, "dedupe": gen.dedupe, "keep_rejected": gen.keep_rejected,
    }


def _generate(recipe: Recipe, inputs: Inputs, out: Path, resume: bool) -> None:
    """Sample the prompts not yet done, chunk by chunk, then merge the parts and summarise."""
    import pyarrow as pa

    from cluster.inputs.prepare import file_sha256
    from cluster.output.run_dir import RECIPE_FILE
    from cluster.output.run_log import atomic_write
    from cluster.output.trace_parts import ProgressError, TraceParts, trace_schema

    fields = pa.Table.from_pylist([row.fields for row in inputs.rows]).schema
    names = list(recipe.reward.weights)
    parts = TraceParts(out, trace_schema(names, fields),
                       trace_schema(names, fields, rejected=True) if recipe.generate.keep_rejected else None)
    wanted = {"settings": settings(recipe), "train_data_sha256": file_sha256(recipe.data.train_path)}
    if resume:
        try:
            header, chunks = parts.load()
        except ProgressError as err:
            raise RunDirError(f"--resume: {err}") from None
        _check_same(header, wanted, out)
    else:
        parts.start(wanted)
        text = json.dumps(recipe_to_dict(recipe), indent=2)
        atomic_write(out / RECIPE_FILE, lambda tmp: Path(tmp).write_text(text))  # a full disk named in one line
        chunks = []
    done = {record["prompt_index"] for chunk in chunks for record in chunk["prompts"]}
    todo = [row for row in inputs.rows if row.index not in done]
    timing = {"prompts": 0, "completions": 0, "tokens": 0, "seconds": 0.0}
    if done:
        print(f"[aha] resuming: {len(done)} prompts done, {len(todo)} to go", flush=True)
    if todo:
        first = 1 + max((chunk["chunk"] for chunk in chunks), default=-1)
        chunks += _sample(recipe, inputs, todo, parts, first, total=len(done) + len(todo), timing=timing)
    _finish(recipe, parts, chunks, wanted["settings"], timing)


def _check_same(header: dict, wanted: dict, out: Path) -> None:
    if header.get("train_data_sha256") != wanted["train_data_sha256"]:
        raise RunDirError(f"--resume: data.train_path's content differs from the file the run in '{out}' sampled "
                          "from; start a new run (or --overwrite) to sample the new file")
    saved = header.get("settings", {})
    changed = sorted(key for key in wanted["settings"] if saved.get(key) != wanted["settings"][key])
    if changed:
        raise RunDirError(f"--resume: the recipe differs from the run's in '{out}' in {', '.join(changed)} (the "
                          "traces would mix two settings); start a new run or pass --overwrite")


def _sample(recipe: Recipe, inputs: Inputs, todo: list[PromptRow], parts, first: int, *, total: int,
            timing: dict) -> list[dict]:
    """Stream `todo` through the rollout workers a chunk at a time, score every group, and write
    each chunk as soon as all its prompts are scored; returns the chunks' progress records."""
    from tqdm import tqdm

    from cluster.inputs.prompts import encode_prompts
    from cluster.output.run_dir import PLACEMENT_FILE
    from cluster.roles.rollout_pool import GroupStream
    from cluster.roles.scoring import ScoresInFlight, consume_scored
    from cluster.startup.live_placement import write_placement
    from cluster.startup.specs import sampling_spec

    gen = recipe.generate
    sampling = replace(sampling_spec(recipe, seed=None), group_size=gen.samples_per_prompt)
    chunks = [todo[i:i + gen.chunk_prompts] for i in range(0, len(todo), gen.chunk_prompts)]
    plan, pool, scorers = _start_roles(recipe, inputs.model_path)
    print(f"[aha] generating {gen.samples_per_prompt} completions for each of {len(todo)} prompts "
          f"({len(chunks)} chunks); output in {parts.out}", flush=True)
    stream, owner, scored, written = GroupStream(pool), {}, [dict() for _ in chunks], []
    scoring, launched = ScoresInFlight(scorers), 0

    def launch() -> None:
        nonlocal launched
        rows = chunks[launched]
        for index, row in zip(stream.add(encode_prompts(recipe, inputs.tokenizer, rows), sampling), rows):
            owner[index] = (launched, row)
        launched += 1

    def submit(index: int, samples: list) -> None:
        number, row = owner.pop(index)
        scoring.submit((number, row), row.fields, samples)

    def keep(done: ScoredGroup) -> None:  # a scored group: once its chunk is whole, write it and start the next
        number, row = done.key
        scored[number][row.index] = _graded(recipe, done)
        bar.update(1)
        if len(scored[number]) < len(chunks[number]):
            return
        if launched < len(chunks):
            launch()
        written.append(_write_chunk(recipe, parts, first + number, chunks[number], scored[number]))
        scored[number] = {}
        bar.set_postfix_str(_count(timing, written[-1]["prompts"]) + f" in chunk {first + number}")

    bar = tqdm(total=total, initial=total - len(todo), desc="aha generate", unit="prompt", dynamic_ncols=True)
    started = time.perf_counter()
    try:
        write_placement(parts.out / PLACEMENT_FILE, plan, {"rollout": pool.placement, "scorer": scorers.placement})
        while launched < min(len(chunks), 1 + LOOKAHEAD_CHUNKS):
            launch()
        consume_scored(stream, scoring, submit, keep)
        timing["seconds"] = time.perf_counter() - started
    finally:
        bar.close()
        pool.shutdown()
        scorers.shutdown()
    if len(written) != len(chunks):
        raise RuntimeError(f"generate: the rollout stream ended after {len(written)} of {len(chunks)} chunks")
    return written


def _count(timing: dict, records: list[dict]) -> str:
    """Add a written chunk's prompts, completions and tokens to `timing`; "kept K/N" of it."""
    timing["prompts"] += len(records)
    timing["completions"] += sum(r["sampled"] for r in records)
    timing["tokens"] += sum(r["sampled_tokens"] for r in records)
    return f"kept {sum(r['kept'] for r in records)}/{sum(r['sampled'] for r in records)}"


def _start_roles(recipe: Recipe, model_path: str):
    """The plan, the rollout pool and the scorers of `aha generate` (no learner), up. They boot
    side by side; one that cannot start leaves nothing started behind."""
    from cluster.roles.recovery import Recovery
    from cluster.roles.system import start_rollout_pool, start_scorers
    from cluster.startup.live_placement import plan_run
    from cluster.startup.ray import connect_ray

    plan = plan_run(recipe, connect_ray(recipe.cluster), "generate")  # a plan that cannot fit is one line here
    recovery = Recovery(recipe.cluster.max_restarts)  # dead workers and scorers are replaced, as in training
    scorers, pool = start_scorers(recipe, plan, recovery), None
    try:
        pool = start_rollout_pool(recipe, model_path, plan.nodes_of("rollout"), recovery)
        pool.wait_started()
        scorers.wait_started()
    except BaseException:
        scorers.shutdown()
        if pool is not None:
            pool.shutdown()
        raise
    return plan, pool, scorers


def _graded(recipe: Recipe, done: ScoredGroup) -> list:
    """A scored group's completions as rejection sampling weighs them: correct or not."""
    from cluster.roles.evaluation import correctness_reward
    from cluster.output.rejection import Scored

    name = correctness_reward(recipe)
    return [Scored(text=s.text, num_tokens=len(s.completion_ids), finish_reason=s.finish_reason, reward=score.total,
                  components=dict(score.components), correct=score.components[name] == 1.0)
            for s, score in zip(done.samples, done.scores, strict=True)]


def _write_chunk(recipe: Recipe, parts, number: int, rows: list[PromptRow], scored: dict) -> dict:
    """A finished chunk: pick its traces and write them with its per-prompt records."""
    from cluster.output.rejection import prompt_record, trace_rows, verdicts

    gen = recipe.generate
    traces, rejected, records = [], [] if gen.keep_rejected else None, []
    for row in rows:
        completions = scored[row.index]
        marks = verdicts(completions, keep=gen.keep, max_per_prompt=gen.max_per_prompt, dedupe=gen.dedupe)
        common = dict(teacher=recipe.model.path, system_prompt=recipe.data.system_prompt)
        traces += trace_rows(row.index, row.prompt, row.fields, completions, marks, **common)
        if rejected is not None:
            rejected += trace_rows(row.index, row.prompt, row.fields, completions, marks, kept=False, **common)
        records.append(prompt_record(row.index, completions, marks))
    return parts.write_chunk(number, traces, rejected, records)


def _finish(recipe: Recipe, parts, chunks: list[dict], setting: dict, timing: dict) -> None:
    """Merge the parts, write summary.json and generate.md, and print the summary."""
    from cluster.output.trace_parts import REPORT_FILE, SUMMARY_FILE, write_summary
    from cluster.output.rejection import summarize, summary_markdown

    written = parts.merge(chunks)
    records = sorted((r for chunk in chunks for r in chunk["prompts"]), key=lambda r: r["prompt_index"])
    summary = summarize(records, recipe.generate.samples_per_prompt)
    seconds = timing["seconds"]
    this_run = {**timing, "completions_per_s": timing["completions"] / seconds if seconds else 0.0,
                "tokens_per_s": timing["tokens"] / seconds if seconds else 0.0}
    report = summary_markdown(summary, recipe.model.path)
    write_summary(parts.out, {"settings": setting, "summary": summary, "this_run": this_run}, report)
    print(report, flush=True)
    files = ", ".join(str(parts.out / name) for name in (*written, SUMMARY_FILE, REPORT_FILE))
    print(f"[aha] done: kept {summary['kept']} of {summary['sampled']} completions; {files}", flush=True)
