"""Trace data sets for SFT (cluster/inputs/traces.py): shapes, masks at the prompt/completion
boundary, EOS, chats, and bad files — with the tiny model's real tokenizer."""

import json

import pytest
from transformers import AutoTokenizer

from cluster.inputs.data import DataError
from cluster.inputs.tasks import write_jsonl, write_parquet
from cluster.inputs.traces import encode_traces, fit_to_length, load_traces, trace_shape
from cluster.recipe.schema import SFTConfig

SFT = SFTConfig()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _encode(rows, tokenizer, template="{prompt}=? <think>", path="t.parquet"):
    return encode_traces(rows, tokenizer, template=template, system_prompt="", path=path)


def test_prompt_completion_boundary_and_eos_by_hand(tmp_path, tokenizer):
    path = write_parquet([{"prompt": "1+2", "completion": "3</think>"}], tmp_path / "t.parquet")
    [trace] = _encode(load_traces(path, SFT, "{prompt}=? <think>"), tokenizer)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert trace.prompt_ids == ids("1+2=? <think>")  # the template, as RL and eval prompt
    assert trace.completion_ids == ids("3</think>") + [tokenizer.eos_token_id]  # EOS appended
    assert trace.completion_mask == [1] * len(trace.completion_ids)
    # a completion that already ends in EOS gets no second one
    [again] = _encode(load_traces(write_parquet([{"prompt": "1+2", "completion": "3<|im_end|>"}],
                                                tmp_path / "e.parquet"), SFT, "raw"), tokenizer, template="raw")
    assert again.completion_ids.count(tokenizer.eos_token_id) == 1


def test_chat_messages_learn_only_assistant_turns(tmp_path, tokenizer):
    chat = [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"},
            {"role": "user", "content": "and 4+4"}, {"role": "assistant", "content": "8"}]
    path = write_jsonl([{"messages": chat}], tmp_path / "chat.jsonl")
    [trace] = _encode(load_traces(path, SFT, "chat"), tokenizer, template="chat", path=str(path))
    text = tokenizer.decode(trace.prompt_ids + trace.completion_ids)
    assert text == tokenizer.apply_chat_template(chat, tokenize=False)
    learned = tokenizer.decode([t for t, m in zip(trace.completion_ids, trace.completion_mask) if m])
    # each assistant turn with its end marker (the EOS); never a user turn or the template's markup
    assert learned == "3<|im_end|>\n8<|im_end|>\n"
    assert tokenizer.decode(trace.prompt_ids) == "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"


def test_single_turn_messages_under_a_plain_template_equal_prompt_completion(tmp_path, tokenizer):
    chat = [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"}]
    a = _encode(load_traces(write_jsonl([{"messages": chat}], tmp_path / "m.jsonl"), SFT, "r1_zero"), tokenizer,
                template="r1_zero")
    b = _encode(load_traces(write_jsonl([{"prompt": "1+2", "completion": "3"}], tmp_path / "p.jsonl"), SFT, "r1_zero"),
                tokenizer, template="r1_zero")
    assert (a[0].prompt_ids, a[0].completion_ids) == (b[0].prompt_ids, b[0].completion_ids)


def test_shape_detection():
    assert trace_shape(["prompt", "completion", "messages"], SFT, "r1_zero") == "prompt_completion"
    assert trace_shape(["prompt", "completion", "messages"], SFT, "chat") == "messages"
    assert trace_shape(["messages", "reward"], SFT, "r1_zero") == "messages"
    assert trace_shape(["prompt", "answer"], SFT, "r1_zero") is None


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "1+2"}], "needs 'prompt' \\+ 'completion' columns or a 'messages' column \\(columns: prompt;"),
    ([{"completion": "3"}], "needs 'prompt' \\+ 'completion' columns"),
    ([{"prompt": "1+2", "completion": None}], "column 'completion' row 0 \\(line 1\\) is null"),
    ([{"prompt": " ", "completion": "3"}], "row 0 \\(line 1\\) is empty or whitespace only"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "has no assistant turn"),
    ([{"messages": [{"role": "robot", "content": "hi"}]}], "turn 0 needs a role"),
    ([{"messages": "hello"}], "is not a non-empty list of chat turns"),
])
def test_bad_trace_files_are_one_line(tmp_path, rows, message):
    path = write_jsonl(rows, tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match=message) as err:
        load_traces(path, SFT, "r1_zero")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_traces(tmp_path / "empty.jsonl", SFT, "r1_zero")
    with pytest.raises(DataError, match="no such file"):
        load_traces(tmp_path / "nope.parquet", SFT, "r1_zero")


def test_multi_turn_needs_the_chat_template(tmp_path, tokenizer):
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    path = write_jsonl([{"messages": chat}], tmp_path / "c.jsonl")
    with pytest.raises(DataError, match='needs data.template = "chat"'):
        _encode(load_traces(path, SFT, "r1_zero"), tokenizer, template="r1_zero", path=str(path))


def test_too_long_rows_are_skipped_and_counted_or_refused(tmp_path, tokenizer):
    rows = [{"prompt": "1+2", "completion": "3"}, {"prompt": "1+2", "completion": "x" * 200}]
    path = write_parquet(rows, tmp_path / "t.parquet")
    encoded = _encode(load_traces(path, SFT, "raw"), tokenizer, template="raw")
    kept, skipped = fit_to_length(encoded, 64, too_long="skip", path=str(path))
    assert [t.index for t in kept] == [0] and skipped == [1]
    with pytest.raises(DataError, match=r"row 1 is 204 tokens .* over sft.max_length=64"):
        fit_to_length(encoded, 64, too_long="error", path=str(path))
    with pytest.raises(DataError, match="every row is over"):
        fit_to_length(encoded, 3, too_long="skip", path=str(path))


def test_generate_output_shape_round_trips(tmp_path, tokenizer):
    """The columns `aha generate` writes (prompt, completion, messages and verification columns)
    are read as prompt + completion; the extra columns are ignored."""
    row = {"prompt": "1+2", "completion": "3</think><answer>3</answer>", "reward": 1.0, "num_tokens": 5,
           "messages": [{"role": "user", "content": "1+2"},
                        {"role": "assistant", "content": "3</think><answer>3</answer>"}], "teacher": "m"}
    path = write_parquet([row], tmp_path / "traces.parquet")
    [trace] = load_traces(path, SFT, "r1_zero")
    assert (trace.prompt, trace.completion, trace.messages) == ("1+2", row["completion"], None)
    assert json.dumps(row)  # plain data
