"""Prompt datasets: load rows from Parquet or JSON Lines, render prompt templates, sample batches.

A dataset is a table with one prompt column (the question text) and any number of other
columns that reward functions receive as keyword fields (`answer`, `numbers`, `target`, ...).
Every problem with a user's file is a one-line `DataError` naming the file, the column and,
where it applies, the row, so a bad dataset fails at start-up rather than mid-run.

Only the standard library and pyarrow are imported here: the driver loads this module without
torch, ray or transformers. The template names and their check are the recipe's
(`cluster.recipe.checks`), so a bad template is refused when the recipe loads.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from cluster.recipe.checks import PROMPT_PLACEHOLDER, check_template

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".json")
FILE_FORMATS = ("auto", "parquet", "jsonl")


# Plain-text template of DeepSeek-R1-Zero: no chat markup, so it works with base models.
# It ends inside the think block so the first generated token is already reasoning.
R1_ZERO_TEMPLATE = (
    "A conversation between a User and an Assistant. The User asks a question and the "
    "Assistant solves it. The Assistant first thinks through the reasoning process step by "
    "step and then gives the User the answer. The reasoning goes inside <think> </think> tags "
    "and the answer inside <answer> </answer> tags, that is: "
    "<think> reasoning here </think> <answer> answer here </answer>.\n"
    "User: {prompt}\n"
    "Assistant: <think>"
)


class DataError(ValueError):
    """A dataset file that cannot be used; the message is one line naming file, column, row."""

    def __init__(self, message: str):
        # One line even when a path or a value holds a line break.
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class PromptRow:
    """One dataset row: the raw prompt text and the fields handed to reward functions.

    `index` is the row's position in the file; `fields` maps the reward-side field name to a
    plain Python value (a list column comes back as a `list`); `source` is the file it came
    from, so that an error about the row names the right file (train or held-out).
    """

    index: int
    prompt: str
    fields: dict[str, object]
    source: str = field(default="", compare=False)


def one_line(text: object) -> str:
    """Collapse an exception message onto one line so errors stay grep- and log-friendly."""
    return " ".join(str(text).split())


def _resolve_format(path: Path, file_format: str) -> str:
    """Decide between 'parquet' and 'jsonl' from the argument or, for 'auto', the suffix."""
    if file_format not in FILE_FORMATS:
        raise DataError(
            f"data file '{path}': unknown file_format {file_format!r} "
            f"(expected one of: {', '.join(FILE_FORMATS)})"
        )
    if file_format != "auto":
        return file_format
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    known = ", ".join(PARQUET_SUFFIXES + JSONL_SUFFIXES)
    raise DataError(
        f"data file '{path}': cannot tell the format from suffix {suffix or '(none)'!r} "
        f"(expected one of: {known}; or set file_format to 'parquet' or 'jsonl')"
    )


def read_table(path: Path, file_format: str) -> pa.Table:
    """Read the whole file into an Arrow table, turning every read failure into a DataError."""
    if not path.exists():
        raise DataError(f"data file '{path}': no such file")
    if not path.is_file():
        raise DataError(f"data file '{path}': not a regular file")
    fmt = _resolve_format(path, file_format)
    try:
        table = pa_json.read_json(path) if fmt == "jsonl" else pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        # pyarrow calls a blank JSON file invalid; for the user it is an empty dataset.
        if fmt == "jsonl" and not path.read_bytes().strip():
            raise DataError(f"data file '{path}': the dataset has no rows") from exc
        # pyarrow's "in row N" counts within the block it was parsing, not the file: say where.
        where = _jsonl_problem(path) if fmt == "jsonl" else None
        reason = where or re.sub(r" in row \d+$", "", one_line(exc))
        raise DataError(f"data file '{path}': cannot read it as {fmt}: {reason}") from exc
    try:
        table.validate(full=True)  # neither reader checks UTF-8; to_pylist would raise mid-way
    except pa.ArrowException as exc:
        where = _jsonl_problem(path) if fmt == "jsonl" else _bad_text(table)
        raise DataError(f"data file '{path}': {where or one_line(exc)}") from exc
    return table


def _json_kind(value: object) -> str | None:
    """A JSON value's kind as pyarrow's column inference sees it (int and float are both numbers)."""
    if value is None:
        return None
    kinds = ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"), (dict, "object"))
    return next(name for types, name in kinds if isinstance(value, types))


def _jsonl_problem(path: Path) -> str | None:
    """The first line of a JSON Lines file that pyarrow cannot take, found line by line (only
    once pyarrow has failed): not UTF-8, not JSON, not an object, or a column changing kind."""
    first_kind: dict[str, tuple[str, int]] = {}
    try:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
                except UnicodeDecodeError as err:
                    return f"line {number} is not valid UTF-8 (byte {err.start + 1} of the line)"
                except json.JSONDecodeError as err:
                    return f"line {number} is not valid JSON ({err.msg} at column {err.colno})"
                except (ValueError, RecursionError) as err:
                    return f"line {number} is not valid JSON ({one_line(err) or 'nested too deeply'})"
                if not isinstance(record, dict):
                    return f"line {number} is a JSON {_json_kind(record) or 'null'}, not an object"
                for column, value in record.items():
                    kind = _json_kind(value)
                    if kind is None:
                        continue  # a null fits a column of any kind
                    seen_kind, seen_line = first_kind.setdefault(column, (kind, number))
                    if seen_kind != kind:
                        return (f"line {number}: column '{column}' holds a {kind}, but line {seen_line} "
                                f"has a {seen_kind} there")
    except OSError:
        return None
    return None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a key given twice (as pyarrow does; json.loads keeps the last)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice")
        seen.add(key)
    return dict(pairs)


def _bad_text(table: pa.Table) -> str | None:
    """The first column and row whose text is not valid UTF-8 (a Parquet file written by a tool
    that does not check); a slow scan, run only once validation has failed."""
    for name in table.column_names:
        for index, value in enumerate(table.column(name)):
            try:
                value.as_py()
            except UnicodeDecodeError:
                return f"column '{name}' row {index} is not valid UTF-8 text"
    return None


def row_label(path: str | Path, index: int, file_format: str = "auto") -> str:
    """How errors name a row: its index (`PromptRow.index`), and in a JSON Lines file also the
    line an editor shows (blank lines are not rows, so the two differ)."""
    path = Path(path)
    try:
        if _resolve_format(path, file_format) != "jsonl":
            return f"row {index}"
        with path.open("rb") as handle:
            lines = (number for number, raw in enumerate(handle, start=1) if raw.strip())
            line = next(itertools.islice(lines, index, None), None)
    except (DataError, OSError):
        return f"row {index}"
    return f"row {index} (line {line})" if line else f"row {index}"


def require_column(table: pa.Table, path: Path, column: str, label: str) -> pa.ChunkedArray:
    """Return one column, or fail naming it (`label`) and the columns the file does have."""
    matches = table.schema.get_all_field_indices(column)
    if not matches:
        have = ", ".join(table.column_names) or "(none)"
        raise DataError(f"data file '{path}': {label} is missing (columns: {have})")
    if len(matches) > 1:
        raise DataError(f"data file '{path}': {label} appears {len(matches)} times")
    return table.column(matches[0])


def _column_label(field: str, column: str) -> str:
    """How errors name a field column: mention the reward field when it was renamed."""
    if field == column:
        return f"column '{column}'"
    return f"column '{column}' (reward field '{field}')"


def check_prompts(values: list[object], path: Path, column: str, file_format: str) -> list[str]:
    """Every prompt must be a non-blank string; name the first row that is not."""
    for index, value in enumerate(values):
        if value is None:
            problem = "is null"
        elif not isinstance(value, str):
            problem = f"is of type {type(value).__name__}, not a string"
        elif not value.strip():
            problem = "is empty or whitespace only"
        else:
            continue
        raise DataError(f"data file '{path}': column '{column}' {row_label(path, index, file_format)} {problem}")
    return values  # type: ignore[return-value]  # all checked to be str above


def load_prompt_rows(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    columns: dict[str, str] | None = None,
    file_format: str = "auto",
) -> list[PromptRow]:
    """Load a Parquet or JSON Lines dataset into `PromptRow`s.

    `columns` maps reward field name -> dataset column name (e.g. `{"answer": "solution"}`);
    when None every column other than `prompt_column` is passed through under its own name.
    `file_format` is "auto" (by suffix), "parquet" or "jsonl". Raises `DataError` for a
    missing, unreadable or empty file, a missing column, or a null/non-string/blank prompt.
    """
    path = Path(path)
    table = read_table(path, file_format)
    if table.num_rows == 0:
        raise DataError(f"data file '{path}': the dataset has no rows")
    prompt_label = f"prompt column '{prompt_column}'"
    prompt_values = require_column(table, path, prompt_column, prompt_label).to_pylist()
    prompts = check_prompts(prompt_values, path, prompt_column, file_format)

    if columns is None:
        columns = {name: name for name in table.column_names if name != prompt_column}
    field_values = {
        field: require_column(table, path, column, _column_label(field, column)).to_pylist()
        for field, column in columns.items()
    }
    return [
        PromptRow(
            index=index,
            prompt=prompt,
            fields={field: values[index] for field, values in field_values.items()},
            source=str(path),
        )
        for index, prompt in enumerate(prompts)
    ]


def render_prompt(
    prompt: str, template: str, *, tokenizer: object = None, system_prompt: str = ""
) -> str:
    """Turn a dataset prompt into the text the policy model sees.

    Templates: "r1_zero" (plain-text R1-Zero preamble ending in `Assistant: <think>`),
    "chat" (the tokenizer's own chat template; `tokenizer` needs `apply_chat_template`),
    "raw" (unchanged), or a custom string containing `{prompt}` exactly once.
    """
    check_template(template)
    if template == "raw":
        return prompt
    if template == "chat":
        if tokenizer is None:
            raise ValueError("prompt template 'chat' needs a tokenizer with a chat template")
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(  # type: ignore[attr-defined]  # duck-typed
            messages, tokenize=False, add_generation_prompt=True
        )
    text = R1_ZERO_TEMPLATE if template == "r1_zero" else template
    # str.replace, not str.format: prompts (code, sets, LaTeX) are full of braces.
    return text.replace(PROMPT_PLACEHOLDER, prompt, 1)


class PromptSampler:
    """Draws batches of rows in a seeded order, epoch after epoch, resumable from a state dict.

    Each epoch is a fresh permutation that depends only on (seed, epoch), so the order after
    `load_state_dict` is exactly the order an uninterrupted sampler would have produced.
    """

    def __init__(self, rows: list[PromptRow], *, seed: int, shuffle: bool = True) -> None:
        if not rows:
            raise ValueError("PromptSampler needs at least one row")
        self._rows = list(rows)
        self._seed = seed
        self._shuffle = shuffle
        self._epoch = 0
        self._position = 0
        self._order = self._epoch_order(0)

    @property
    def epoch(self) -> int:
        """Number of completed passes over the rows (the epoch the next row comes from)."""
        return self._epoch

    @property
    def position(self) -> int:
        """Index within the current epoch's order of the next row to be drawn."""
        return self._position

    def _epoch_order(self, epoch: int) -> list[int]:
        """Row indices in the order epoch `epoch` visits them."""
        order = list(range(len(self._rows)))
        if self._shuffle:
            # A string seed goes through SHA-512 in random.Random, so the permutation does not
            # depend on PYTHONHASHSEED and is the same on every machine and every restart.
            random.Random(f"aha-prompts:{self._seed}:{epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[PromptRow]:
        """Return the next `n` rows, continuing into the next epoch when this one runs out."""
        if n <= 0:
            raise ValueError(f"batch size must be >= 1, got {n}")
        batch = []
        for _ in range(n):
            batch.append(self._rows[self._order[self._position]])
            self._position += 1
            if self._position == len(self._rows):
                self._epoch += 1
                self._position = 0
                self._order = self._epoch_order(self._epoch)
        return batch

    def state_dict(self) -> dict:
        """Everything needed to continue the same order after a restart (JSON-serialisable)."""
        return {
            "seed": self._seed,
            "shuffle": self._shuffle,
            "num_rows": len(self._rows),
            "epoch": self._epoch,
            "position": self._position,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`; refuse a state saved for another seed or dataset."""
        for key, current in (
            ("seed", self._seed),
            ("shuffle", self._shuffle),
            ("num_rows", len(self._rows)),
        ):
            if state.get(key) != current:
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has "
                    f"{key}={current!r}; the saved order cannot be continued"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"sampler state has invalid epoch {epoch!r}")
        if not isinstance(position, int) or not 0 <= position < len(self._rows):
            raise ValueError(f"sampler state has invalid position {position!r}")
        self._epoch = epoch
        self._position = position
        self._order = self._epoch_order(epoch)
