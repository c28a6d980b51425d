"""Tests for cluster.inputs.data: loading, templates, sampling (the task generators: test_tasks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.inputs.data import (
    R1_ZERO_TEMPLATE,
    DataError,
    PromptRow,
    PromptSampler,
    load_prompt_rows,
    render_prompt,
)
from cluster.recipe.checks import TEMPLATE_NAMES, check_template

RECORDS = [
    {"prompt": "What is 2 + 3?", "solution": "5", "numbers": [2, 3], "target": 5},
    {"prompt": "What is 7 * 6?", "solution": "42", "numbers": [7, 6], "target": 42},
    {"prompt": "What is 9 - 4?", "solution": "5", "numbers": [9, 4, 1], "target": 5},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_table(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def data_error(path: Path, **kwargs) -> str:
    """Load expecting a DataError; check it is one line naming the file, return the message."""
    with pytest.raises(DataError) as info:
        load_prompt_rows(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    return message


# ---------------------------------------------------------------- loading


def test_parquet_and_jsonl_give_equal_rows(tmp_path):
    from_parquet = load_prompt_rows(write_table(tmp_path / "d.parquet", RECORDS))
    from_jsonl = load_prompt_rows(write_jsonl(tmp_path / "d.jsonl", RECORDS))
    assert from_parquet == from_jsonl
    assert from_parquet[1] == PromptRow(
        index=1,
        prompt="What is 7 * 6?",
        fields={"solution": "42", "numbers": [7, 6], "target": 42},
    )


def test_default_passes_every_other_column_through(tmp_path):
    rows = load_prompt_rows(write_table(tmp_path / "d.pq", RECORDS))
    assert [row.index for row in rows] == [0, 1, 2]
    assert [row.prompt for row in rows] == [r["prompt"] for r in RECORDS]
    assert set(rows[0].fields) == {"solution", "numbers", "target"}


def test_column_mapping_renames_and_keeps_lists(tmp_path):
    path = write_table(tmp_path / "d.parquet", RECORDS)
    rows = load_prompt_rows(path, columns={"answer": "solution", "numbers": "numbers"})
    assert rows[2].fields == {"answer": "5", "numbers": [9, 4, 1]}
    assert type(rows[2].fields["numbers"]) is list


def test_other_prompt_column(tmp_path):
    records = [{"question": "Q1", "answer": "1"}, {"question": "Q2", "answer": "2"}]
    rows = load_prompt_rows(write_jsonl(tmp_path / "q.json", records), prompt_column="question")
    assert [(row.prompt, row.fields) for row in rows] == [
        ("Q1", {"answer": "1"}),
        ("Q2", {"answer": "2"}),
    ]


def test_file_format_forces_the_reader(tmp_path):
    parquet_as_txt = write_table(tmp_path / "data.txt", RECORDS)
    jsonl_as_dat = write_jsonl(tmp_path / "data.dat", RECORDS)
    assert len(load_prompt_rows(parquet_as_txt, file_format="parquet")) == 3
    assert len(load_prompt_rows(jsonl_as_dat, file_format="jsonl")) == 3
    # Forcing the wrong reader is a read error, not a crash.
    assert "jsonl" in data_error(parquet_as_txt, file_format="jsonl")


def jsonl_of(records):
    return lambda path: write_jsonl(path, records)


def parquet_of(records):
    return lambda path: write_table(path, records)


def text_of(text):
    def write(path: Path) -> Path:
        path.write_text(text)
        return path

    return write


def make_directory(path: Path) -> Path:
    path.mkdir()
    return path


def write_truncated_parquet(path: Path) -> Path:
    path.write_bytes(write_table(path, RECORDS).read_bytes()[:-20])
    return path


def write_empty_parquet(path: Path) -> Path:
    schema = pa.schema([("prompt", pa.string()), ("answer", pa.string())])
    pq.write_table(schema.empty_table(), path)
    return path


NO_ANSWER = [{"prompt": "Q", "target": 1}]
# (file name, how to make the file, load_prompt_rows arguments, text the error must contain)
BAD_FILES = [
    ("d.jsonl", jsonl_of(RECORDS), {"file_format": "csv"}, "unknown file_format 'csv'"),
    ("d.csv", jsonl_of(RECORDS), {}, "suffix '.csv'"),
    ("absent.parquet", lambda path: path, {}, "no such file"),
    ("dir.parquet", make_directory, {}, "not a regular file"),
    ("fake.parquet", text_of("not parquet\n"), {}, "cannot read it as parquet"),
    ("cut.parquet", write_truncated_parquet, {}, "cannot read it as parquet"),
    ("bad.jsonl", text_of('{"prompt": "ok"}\n{"prompt": oops}\n'), {}, "as jsonl"),
    ("empty.parquet", write_empty_parquet, {}, "the dataset has no rows"),
    ("empty.jsonl", text_of("\n"), {}, "the dataset has no rows"),
    ("zero_bytes.jsonl", text_of(""), {}, "the dataset has no rows"),
    (
        "d.parquet",
        parquet_of([{"question": "Q", "target": 1}]),
        {},
        "prompt column 'prompt' is missing (columns: question, target)",
    ),
    (
        "d.parquet",
        parquet_of(NO_ANSWER),
        {"columns": {"answer": "solution"}},
        "column 'solution' (reward field 'answer') is missing (columns: prompt, target)",
    ),
    (
        "d.jsonl",
        jsonl_of(NO_ANSWER),
        {"columns": {"answer": "answer"}},
        "column 'answer' is missing (columns: prompt, target)",
    ),
    (
        "d.jsonl",
        jsonl_of([{"prompt": "a"}, {"prompt": "b"}, {"prompt": None}]),
        {},
        "column 'prompt' row 2 (line 3) is null",  # JSON Lines: the line too
    ),
    (
        "d.parquet",
        parquet_of([{"q": 1}, {"q": 2}]),
        {"prompt_column": "q"},
        "column 'q' row 0 is of type int, not a string",
    ),
    (
        "d.jsonl",
        jsonl_of([{"prompt": "a"}, {"prompt": " \t\n"}]),
        {},
        "column 'prompt' row 1 (line 2) is empty or whitespace only",
    ),
]


@pytest.mark.parametrize(("name", "make", "kwargs", "expected"), BAD_FILES)
def test_bad_files_raise_one_line_data_error(tmp_path, name, make, kwargs, expected):
    path = make(tmp_path / name)
    message = data_error(path, **kwargs)
    assert expected in message
    assert message.startswith(f"data file '{path}': ")


# ---------------------------------------------------------------- templates


def test_r1_zero_template():
    text = render_prompt("What is 2 + 3?", "r1_zero")
    assert "User: What is 2 + 3?\n" in text
    assert text.endswith("Assistant: <think>")
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in text.split("User:")[0]
    assert text == R1_ZERO_TEMPLATE.replace("{prompt}", "What is 2 + 3?")


def test_raw_template():
    assert render_prompt("  as is {x}  ", "raw") == "  as is {x}  "


def test_custom_template_keeps_braces_in_prompt():
    assert render_prompt("f({x})", "Q: {prompt}\nA:") == "Q: f({x})\nA:"
    # A prompt that itself contains the placeholder is inserted literally, not re-expanded.
    assert render_prompt("{prompt}", "<<{prompt}>>") == "<<{prompt}>>"


@pytest.mark.parametrize("template", ["nonsense", "{prompt} and {prompt}", "", "{Prompt}"])
def test_invalid_templates(template):
    with pytest.raises(ValueError, match="template"):
        check_template(template)
    with pytest.raises(ValueError, match="template"):
        render_prompt("x", template)


def test_check_template_accepts_valid():
    for template in (*TEMPLATE_NAMES, "Solve: {prompt}"):
        check_template(template)


class RecordingTokenizer:
    """Stands in for a Hugging Face tokenizer: records what apply_chat_template received."""

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, *, tokenize, add_generation_prompt):
        self.calls.append((messages, tokenize, add_generation_prompt))
        body = "".join(f"[{m['role']}]{m['content']}" for m in messages)
        return body + "[assistant]"


def test_chat_template_without_system():
    tokenizer = RecordingTokenizer()
    assert render_prompt("hi", "chat", tokenizer=tokenizer) == "[user]hi[assistant]"
    assert tokenizer.calls == [([{"role": "user", "content": "hi"}], False, True)]


def test_chat_template_with_system():
    tokenizer = RecordingTokenizer()
    text = render_prompt("hi", "chat", tokenizer=tokenizer, system_prompt="Be brief.")
    assert text == "[system]Be brief.[user]hi[assistant]"
    messages = tokenizer.calls[0][0]
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_chat_template_needs_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        render_prompt("hi", "chat")


# ---------------------------------------------------------------- sampler


def make_rows(count: int) -> list[PromptRow]:
    return [PromptRow(index=i, prompt=f"p{i}", fields={}) for i in range(count)]


def draw(sampler: PromptSampler, count: int) -> list[int]:
    return [row.index for row in sampler.next_batch(count)]


def test_same_seed_same_order_different_seed_different_order():
    rows = make_rows(20)
    first = draw(PromptSampler(rows, seed=1), 20)
    assert first == draw(PromptSampler(rows, seed=1), 20)
    assert first != draw(PromptSampler(rows, seed=2), 20)
    assert first != list(range(20))  # actually shuffled


def test_epochs_cover_every_row_once_across_boundaries():
    sampler = PromptSampler(make_rows(10), seed=7)
    drawn = draw(sampler, 3) + draw(sampler, 4) + draw(sampler, 4)  # crosses at 10
    assert (sampler.epoch, sampler.position) == (1, 1)
    drawn += draw(sampler, 9)
    assert (sampler.epoch, sampler.position) == (2, 0)
    assert sorted(drawn[:10]) == list(range(10))
    assert sorted(drawn[10:]) == list(range(10))
    assert drawn[:10] != drawn[10:]  # a new permutation each epoch


def test_batch_larger_than_dataset():
    sampler = PromptSampler(make_rows(3), seed=0)
    drawn = draw(sampler, 7)
    assert sorted(drawn[:3]) == sorted(drawn[3:6]) == [0, 1, 2]
    assert (sampler.epoch, sampler.position) == (2, 1)


def test_state_dict_round_trip_continues_identically():
    rows = make_rows(11)
    uninterrupted = PromptSampler(rows, seed=3)
    expected = draw(uninterrupted, 5) + draw(uninterrupted, 5) + draw(uninterrupted, 30)

    before = PromptSampler(rows, seed=3)
    got = draw(before, 5) + draw(before, 5)
    state = json.loads(json.dumps(before.state_dict()))  # survives a checkpoint file
    resumed = PromptSampler(rows, seed=3)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (0, 10)
    got += draw(resumed, 30)
    assert got == expected


def test_load_state_dict_rejects_other_seed_or_dataset():
    state = PromptSampler(make_rows(5), seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        PromptSampler(make_rows(5), seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="num_rows"):
        PromptSampler(make_rows(6), seed=1).load_state_dict(state)


def test_no_shuffle_is_file_order():
    sampler = PromptSampler(make_rows(4), seed=9, shuffle=False)
    assert draw(sampler, 6) == [0, 1, 2, 3, 0, 1]


def test_sampler_rejects_bad_arguments():
    sampler = PromptSampler(make_rows(2), seed=0)
    for n in (0, -1):
        with pytest.raises(ValueError):
            sampler.next_batch(n)
    with pytest.raises(ValueError):
        PromptSampler([], seed=0)
