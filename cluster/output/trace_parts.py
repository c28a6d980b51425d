"""What `aha generate` leaves in its output directory, written as it goes:

    recipe.json       the resolved recipe
    parts/            per finished chunk of prompts: traces-000003.parquet (its kept traces) and,
                      with generate.keep_rejected, rejected-000003.parquet (the rest, with why)
    progress.jsonl    a header line, then one line per finished chunk: its part files and a
                      record per prompt (counts and tokens, sampled and kept)
    traces.parquet    every part's traces in one file, by prompt index and sample index
    rejected.parquet  (generate.keep_rejected) the same for the completions not kept
    summary.json      settings and totals: kept / sampled, pass-rate histogram, tokens
    generate.md       the summary as a table (also printed)

A chunk is finished once its line is in progress.jsonl, which is written after its parts
(each to a temporary name, fsync'ed and renamed into place), so a SIGKILL leaves only whole
parts; a part without its line, a temporary, or a torn last line is removed on resume and the
chunk's prompts are sampled again. A write the file system refuses (a full disk, a lost
permission) is a one-line DiskWriteFailed naming the cause.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.output.run_log import atomic_write
from cluster.output.rejection import REWARD_PREFIX, field_column
from cluster.wire.disk_errors import naming_disk_errors

PARTS_DIR = "parts"
PROGRESS_FILE = "progress.jsonl"
TRACES_FILE = "traces.parquet"
REJECTED_FILE = "rejected.parquet"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "generate.md"
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class ProgressError(ValueError):
    """A progress file that cannot be continued from; one line naming it."""


def trace_schema(reward_names: Sequence[str], fields: pa.Schema, *, rejected: bool = False) -> pa.Schema:
    """The trace columns with fixed types, then the dataset's fields (`fields`: their types as
    the data file gives them), so every part reads back as one table."""
    columns = [("prompt", pa.string()), ("completion", pa.string()), ("messages", MESSAGES),
               ("prompt_index", pa.int64()), ("sample_index", pa.int64()), ("reward", pa.float64()),
               *((REWARD_PREFIX + name, pa.float64()) for name in reward_names),
               ("num_tokens", pa.int64()), ("finish_reason", pa.string()), ("teacher", pa.string()),
               ("pass_rate", pa.float64()), *((("rejected", pa.string()),) if rejected else ())]
    return pa.schema(columns + [(field_column(f.name), f.type) for f in fields])


class TraceParts:
    """The parts and progress of one generate run in `out`."""

    def __init__(self, out: Path, schema: pa.Schema, rejected_schema: pa.Schema | None):
        self.out, self.schema, self.rejected_schema = Path(out), schema, rejected_schema
        self.parts = self.out / PARTS_DIR
        self.progress = self.out / PROGRESS_FILE

    def start(self, header: Mapping) -> None:
        """A fresh run: no parts, a progress file holding only `header`."""
        with naming_disk_errors(self.parts):
            self.parts.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"header": dict(header)}) + "\n"
        atomic_write(self.progress, lambda tmp: Path(tmp).write_text(line))

    def load(self) -> tuple[dict, list[dict]]:
        """A resumed run: (header, finished chunks). Removes what a killed run left half done."""
        header, chunks = read_progress(self.out)
        self.parts.mkdir(parents=True, exist_ok=True)
        listed = {name for chunk in chunks for name in (chunk["traces"], chunk.get("rejected")) if name}
        for path in self.parts.iterdir():
            if path.name not in listed:
                path.unlink()
        return header, chunks

    def write_chunk(self, number: int, traces: list[dict], rejected: list[dict] | None, records: list[dict]) -> dict:
        """Write a finished chunk's parts, then its progress line; returns that line's record."""
        entry = {"chunk": number, "traces": f"traces-{number:06d}.parquet", "rejected": None, "prompts": records}
        _write_table(self.parts / entry["traces"], traces, self.schema)
        if rejected is not None:
            entry["rejected"] = f"rejected-{number:06d}.parquet"
            _write_table(self.parts / entry["rejected"], rejected, self.rejected_schema)
        with naming_disk_errors(self.progress), open(self.progress, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return entry

    def merge(self, chunks: Sequence[Mapping]) -> dict[str, int]:
        """Write traces.parquet (and rejected.parquet) from the chunks' parts; rows per file."""
        written = {}
        for kind, name, schema in (("traces", TRACES_FILE, self.schema),
                                   ("rejected", REJECTED_FILE, self.rejected_schema)):
            parts = [self.parts / chunk[kind] for chunk in chunks if chunk.get(kind)]
            if schema is None:
                continue
            tables = [pq.read_table(path, schema=schema) for path in parts] or [schema.empty_table()]
            table = pa.concat_tables(tables).sort_by([("prompt_index", "ascending"), ("sample_index", "ascending")])
            atomic_write(self.out / name, lambda tmp, table=table: pq.write_table(table, tmp))
            written[name] = table.num_rows
        return written


def read_progress(out: Path) -> tuple[dict, list[dict]]:
    """The header and finished chunks of `out`'s progress file; a torn last line (a kill while it
    was written) is dropped from the file. ProgressError when there is no header."""
    path = Path(out) / PROGRESS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ProgressError(f"'{path}' cannot be read ({type(err).__name__})") from None
    lines = text.splitlines(keepends=True)
    entries = []
    for number, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ProgressError(f"'{path}' is damaged (line {number + 1} is not JSON)") from None
            kept = "".join(lines[:-1])
            atomic_write(path, lambda tmp: Path(tmp).write_text(kept))
    if not entries or "header" not in entries[0]:
        raise ProgressError(f"'{path}' has no header line: it was not written by aha generate")
    return entries[0]["header"], entries[1:]


def finished_prompts(out: Path) -> int | None:
    """How many prompts an earlier generate run in `out` finished (None: no progress file)."""
    if not (Path(out) / PROGRESS_FILE).is_file():
        return None
    try:
        _, chunks = read_progress(out)
    except ProgressError:
        return 0
    return sum(len(chunk["prompts"]) for chunk in chunks)


def write_summary(out: Path, document: Mapping, report: str) -> None:
    atomic_write(Path(out) / SUMMARY_FILE, lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2) + "\n"))
    atomic_write(Path(out) / REPORT_FILE, lambda tmp: Path(tmp).write_text(report + "\n"))


def _write_table(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
