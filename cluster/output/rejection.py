"""Rejection sampling's pure parts (`aha generate`): which scored completions become traces, the
trace rows, and the run's summary. Plain data in, plain data out; the driver is
cluster/commands/generate.py and the files are written by cluster/output/trace_parts.py.

A completion is *verified* when the correctness reward gives it 1.0. Of a prompt's verified
completions, exact duplicates of an earlier one are dropped (`dedupe`), then the policy keeps
`"all_correct"` (in sampling order, at most `max_per_prompt`; 0: no cap) or
`"shortest_correct"` (the one with the fewest tokens; a tie goes to the first sampled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KEPT = "kept"
# Why a completion is not a trace: not verified, a repeat of a kept one, or left out by the policy.
INCORRECT, DUPLICATE, OVER_CAP, NOT_SHORTEST = "incorrect", "duplicate", "over_cap", "not_shortest"
DROP_REASONS = (INCORRECT, DUPLICATE, OVER_CAP, NOT_SHORTEST)
REWARD_PREFIX = "reward/"
# Columns every trace row has (besides reward/<name> and the dataset row's fields).
TRACE_COLUMNS = ("prompt", "completion", "messages", "prompt_index", "sample_index", "reward", "num_tokens",
                 "finish_reason", "teacher", "pass_rate")
FIELD_PREFIX = "field/"  # a dataset field whose name a trace column already has goes under field/<name>


@dataclass(frozen=True)
class Scored:
    """One sampled completion of a prompt, scored."""

    text: str
    num_tokens: int
    finish_reason: str
    reward: float
    components: Mapping[str, float]
    correct: bool


def verdicts(completions: Sequence[Scored], *, keep: str, max_per_prompt: int, dedupe: bool) -> list[str]:
    """Per completion (in sampling order): KEPT, or the reason it is dropped."""
    result = [KEPT if c.correct else INCORRECT for c in completions]
    seen: set[str] = set()
    for i, completion in enumerate(completions):
        if result[i] == KEPT and dedupe:
            if completion.text in seen:
                result[i] = DUPLICATE
            seen.add(completion.text)
    candidates = [i for i, verdict in enumerate(result) if verdict == KEPT]
    if keep == "shortest_correct":
        chosen = min(candidates, key=lambda i: (completions[i].num_tokens, i), default=None)
        for i in candidates:
            if i != chosen:
                result[i] = NOT_SHORTEST
    elif keep == "all_correct":
        for i in candidates[max_per_prompt:] if max_per_prompt else ():
            result[i] = OVER_CAP
    else:
        raise ValueError(f"unknown keep policy {keep!r} (expected 'all_correct' or 'shortest_correct')")
    return result


def prompt_record(prompt_index: int, completions: Sequence[Scored], marks: Sequence[str]) -> dict:
    """What a prompt contributes to the summary: counts and tokens, sampled and kept."""
    kept = [c for c, mark in zip(completions, marks, strict=True) if mark == KEPT]
    return {
        "prompt_index": prompt_index,
        "sampled": len(completions),
        "correct": sum(c.correct for c in completions),
        "kept": len(kept),
        **{reason: sum(mark == reason for mark in marks) for reason in DROP_REASONS if reason != INCORRECT},
        "sampled_tokens": sum(c.num_tokens for c in completions),
        "kept_tokens": sum(c.num_tokens for c in kept),
    }


def pass_rate(record: Mapping) -> float:
    return record["correct"] / record["sampled"] if record["sampled"] else 0.0


def field_column(name: str) -> str:
    """The trace column a dataset field is written to."""
    taken = name in TRACE_COLUMNS or name.startswith(REWARD_PREFIX)
    return FIELD_PREFIX + name if taken else name


def messages(prompt: str, completion: str, system_prompt: str = "") -> list[dict[str, str]]:
    """The trace as chat turns: the raw prompt from the user, the completion as the assistant's."""
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return turns + [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def trace_rows(prompt_index: int, prompt: str, fields: Mapping[str, object], completions: Sequence[Scored],
               marks: Sequence[str], *, teacher: str, system_prompt: str = "", kept: bool = True) -> list[dict]:
    """One row per kept completion (`kept=False`: per dropped one, with its `rejected` reason).

    `prompt` is the dataset's raw prompt, not templated: a trainer renders it with its own
    template. The row's fields follow, so a trace can be scored again."""
    rate = pass_rate({"correct": sum(c.correct for c in completions), "sampled": len(completions)})
    rows = []
    for position, (completion, mark) in enumerate(zip(completions, marks, strict=True)):
        if (mark == KEPT) != kept:
            continue
        row = {
            "prompt": prompt, "completion": completion.text,
            "messages": messages(prompt, completion.text, system_prompt),
            "prompt_index": prompt_index, "sample_index": position, "reward": completion.reward,
            **{REWARD_PREFIX + name: value for name, value in completion.components.items()},
            "num_tokens": completion.num_tokens, "finish_reason": completion.finish_reason,
            "teacher": teacher, "pass_rate": rate,
            **({} if kept else {"rejected": mark}),
        }
        row.update((field_column(name), value) for name, value in fields.items())
        rows.append(row)
    return rows


def pass_rate_histogram(records: Sequence[Mapping], samples_per_prompt: int) -> dict[str, int]:
    """Prompts by how many of their samples were verified: {"0/K": prompts, ..., "K/K": prompts}."""
    counts = [0] * (samples_per_prompt + 1)
    for record in records:
        counts[record["correct"]] += 1
    return {f"{correct}/{samples_per_prompt}": count for correct, count in enumerate(counts)}


def summarize(records: Sequence[Mapping], samples_per_prompt: int) -> dict:
    """The run's totals from its per-prompt records (`prompt_record`)."""
    total = {key: sum(r[key] for r in records) for key in
             ("sampled", "correct", "kept", "sampled_tokens", "kept_tokens")}
    return {
        "prompts": len(records),
        **total,
        "kept_fraction": total["kept"] / total["sampled"] if total["sampled"] else 0.0,
        "verified_fraction": total["correct"] / total["sampled"] if total["sampled"] else 0.0,
        "prompts_with_traces": sum(r["kept"] > 0 for r in records),
        "dropped": {reason: (total["sampled"] - total["correct"]) if reason == INCORRECT
                    else sum(r[reason] for r in records) for reason in DROP_REASONS},
        "kept_tokens_mean": total["kept_tokens"] / total["kept"] if total["kept"] else 0.0,
        "pass_rate_histogram": pass_rate_histogram(records, samples_per_prompt),
    }


def summary_markdown(summary: Mapping, teacher: str) -> str:
    """The summary as a short Markdown report (also printed at the end of a run)."""
    dropped = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in summary["dropped"].items()
                        if count)
    lines = [
        f"# aha generate: {teacher}", "",
        "| | |", "|---|---:|",
        f"| prompts | {summary['prompts']} ({summary['prompts_with_traces']} with a kept trace) |",
        f"| sampled | {summary['sampled']} completions, {summary['sampled_tokens']} tokens |",
        f"| verified | {summary['correct']} ({100 * summary['verified_fraction']:.1f}%) |",
        f"| kept | {summary['kept']} ({100 * summary['kept_fraction']:.1f}% of sampled), "
        f"{summary['kept_tokens']} tokens, {summary['kept_tokens_mean']:.1f} per trace |",
        f"| dropped | {dropped or 'none'} |",
        "", "| verified per prompt | prompts |", "|---|---:|",
    ]
    lines += [f"| {rate} | {count} |" for rate, count in summary["pass_rate_histogram"].items()]
    return "\n".join(lines)
