"""Trace data sets (docs/commands.md): what `aha generate` writes and `aha sft` reads.

A trace file is Parquet or JSON Lines with either `prompt` + `completion` columns (the
completion is what the model writes after the templated prompt, `<think>` part included) or
a `messages` column (chat turns; the loss is on the assistant turns), plus any other columns
(`reward/*`, `num_tokens`, `teacher`), which SFT ignores.

Encoding follows how the model is prompted in RL and eval: the prompt is rendered with the
recipe's template and tokenized on its own, the completion on its own, and the tokenizer's EOS
is appended to what the model must learn to end (so the SFT model stops). Tokenizing the two
apart keeps the prompt/completion boundary exactly where generation puts it: no token that
straddles it, no target dropped or added there.

Only the standard library and pyarrow are imported; the tokenizer is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster.inputs.data import DataError, check_prompts, read_table, render_prompt, require_column, row_label

ROLES = ("system", "user", "assistant")
SHAPES = ("prompt_completion", "messages")


@dataclass(frozen=True)
class TraceRow:
    """One trace: `prompt` + `completion`, or `messages` (a list of {"role", "content"})."""

    index: int
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict] | None = None


@dataclass(frozen=True)
class EncodedTrace:
    """Token ids of one trace. `completion_mask` is 1 on the tokens learned from (the
    completion, or the assistant turns and their end markers), 0 on context between them."""

    index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    completion_mask: list[int]

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def trace_shape(columns: list[str], settings, template: str) -> str | None:
    """Which shape a file holds: the recipe's `sft.shape`, or by the columns present ("auto":
    `messages` under the chat template or when there is no prompt/completion pair); None when
    the file has neither."""
    pair = settings.prompt_column in columns and settings.completion_column in columns
    has_messages = settings.messages_column in columns
    if settings.shape != "auto":
        return settings.shape
    if has_messages and (template == "chat" or not pair):
        return "messages"
    return "prompt_completion" if pair else None


def load_traces(path: str | Path, settings, template: str) -> list[TraceRow]:
    """Read and check a trace file with the recipe's `[sft]` settings; DataError (one line,
    naming file, column and row) for a missing file or column, an empty data set, a null or
    non-string prompt/completion, or a `messages` row that is not a list of turns with a role
    and text content and at least one assistant turn."""
    path = Path(path)
    table = read_table(path, settings.file_format)
    if table.num_rows == 0:
        raise DataError(f"data file '{path}': the trace data set has no rows")
    shape = trace_shape(table.column_names, settings, template)
    if shape is None:
        raise DataError(f"data file '{path}': a trace data set needs '{settings.prompt_column}' + "
                        f"'{settings.completion_column}' columns or a '{settings.messages_column}' column (columns: "
                        f"{', '.join(table.column_names)}; the sft.*_column settings name them)")
    if shape == "messages":
        values = require_column(table, path, settings.messages_column,
                                f"messages column '{settings.messages_column}'").to_pylist()
        return [TraceRow(index=i, messages=_check_messages(v, path, i, settings)) for i, v in enumerate(values)]
    prompts = check_prompts(require_column(table, path, settings.prompt_column,
                                           f"prompt column '{settings.prompt_column}'").to_pylist(),
                            path, settings.prompt_column, settings.file_format)
    completions = require_column(table, path, settings.completion_column,
                                 f"completion column '{settings.completion_column}'").to_pylist()
    for index, value in enumerate(completions):
        if not isinstance(value, str):
            kind = "is null" if value is None else f"is of type {type(value).__name__}, not a string"
            raise DataError(f"data file '{path}': column '{settings.completion_column}' "
                            f"{row_label(path, index, settings.file_format)} {kind}")
    return [TraceRow(index=i, prompt=p, completion=c) for i, (p, c) in enumerate(zip(prompts, completions))]


def _check_messages(value: object, path: Path, index: int, settings) -> list[dict]:
    where = f"data file '{path}': column '{settings.messages_column}' {row_label(path, index, settings.file_format)}"
    if not isinstance(value, list) or not value:
        raise DataError(f"{where} is not a non-empty list of chat turns")
    for number, turn in enumerate(value):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: turn {number} needs a role ({', '.join(ROLES)}) and text content")
    if not any(turn["role"] == "assistant" for turn in value):
        raise DataError(f"{where} has no assistant turn: there is nothing to learn from it")
    return [{"role": turn["role"], "content": turn["content"]} for turn in value]


def encode_traces(rows: list[TraceRow], tokenizer, *, template: str, system_prompt: str, path: str,
                  file_format: str = "auto") -> list[EncodedTrace]:
    """Token ids of every trace (see the module docstring). The tokenizer needs an EOS token."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError(f"data file '{path}': the tokenizer has no EOS token, so SFT could not teach the model "
                        "to stop; set model.tokenizer to one that has")
    pairs = [r for r in rows if r.messages is None]
    encoded = {}
    if pairs:
        prompts = [render_prompt(r.prompt, template, tokenizer=tokenizer, system_prompt=system_prompt) for r in pairs]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer([r.completion for r in pairs], add_special_tokens=False)["input_ids"]
        for row, prompt, completion in zip(pairs, prompt_ids, completion_ids):
            encoded[row.index] = _pair(row.index, list(prompt), list(completion), eos)
    for row in rows:
        if row.messages is not None:
            encoded[row.index] = _encode_messages(row, tokenizer, template, system_prompt, eos, path, file_format)
    return [encoded[r.index] for r in rows]


def _pair(index: int, prompt: list[int], completion: list[int], eos: int) -> EncodedTrace:
    if not completion or completion[-1] != eos:
        completion = completion + [eos]
    return EncodedTrace(index, prompt, completion, [1] * len(completion))


def _encode_messages(row: TraceRow, tokenizer, template: str, system_prompt: str, eos: int, path: str,
                     file_format: str) -> EncodedTrace:
    """A chat under the chat template: each assistant turn is what the template adds between
    the conversation so far (with the generation prompt) and the conversation with that turn.
    Under any other template only [system,] user, assistant is accepted: a prompt and a completion."""
    messages = row.messages
    where = f"data file '{path}': {row_label(path, row.index, file_format)}"
    if template != "chat":
        roles = [m["role"] for m in messages if m["role"] != "system"]
        if roles != ["user", "assistant"]:
            raise DataError(f"{where}: a multi-turn chat ({', '.join(roles)}) needs data.template = \"chat\"; "
                            f"data.template {template!r} renders one user prompt and one assistant completion")
        user = next(m["content"] for m in messages if m["role"] == "user")
        prompt = render_prompt(user, template, tokenizer=tokenizer, system_prompt=system_prompt)
        completion = next(m["content"] for m in messages if m["role"] == "assistant")
        return _pair(row.index, _ids(tokenizer, prompt), _ids(tokenizer, completion), eos)
    pieces: list[tuple[str, int]] = []  # (text, learned from?)
    rendered = ""
    for turn in range(len(messages)):
        if messages[turn]["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:turn], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[:turn + 1], tokenize=False)
        if not before.startswith(rendered) or not upto.startswith(before):
            raise DataError(f"{where}: the tokenizer's chat template does not render this chat turn by turn "
                            "(an earlier turn changes when a later one is added), so the assistant tokens "
                            "cannot be told apart")
        pieces += [(before[len(rendered):], 0), (upto[len(before):], 1)]
        rendered = upto
    ids = [(_ids(tokenizer, text), learned) for text, learned in pieces]
    ids = [(piece + [eos] if learned and eos not in piece else piece, learned) for piece, learned in ids]
    prompt, rest = ids[0][0], ids[1:]
    completion = [token for piece, _ in rest for token in piece]
    mask = [learned for piece, learned in rest for _ in piece]
    return EncodedTrace(row.index, prompt, completion, mask)


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_to_length(traces: list[EncodedTrace], max_length: int, *, too_long: str, path: str,
                  file_format: str = "auto") -> tuple[list[EncodedTrace], list[int]]:
    """The traces of at most `max_length` tokens, and the indices of those skipped. With
    too_long = "error" a longer one is a DataError instead. Never truncates: a cut trace
    would teach the model to stop mid-thought, or never to stop."""
    kept, skipped = [], []
    for trace in traces:
        if len(trace) <= max_length:
            kept.append(trace)
            continue
        if too_long == "error":
            raise DataError(f"data file '{path}': {row_label(path, trace.index, file_format)} is {len(trace)} "
                            f"tokens (prompt {len(trace.prompt_ids)} + completion and EOS "
                            f"{len(trace.completion_ids)}), over sft.max_length={max_length}; raise it, or set "
                            "sft.too_long = \"skip\" to leave such rows out")
        skipped.append(trace.index)
    if not kept:
        raise DataError(f"data file '{path}': every row is over sft.max_length={max_length} tokens; nothing to "
                        "train on")
    return kept, skipped
