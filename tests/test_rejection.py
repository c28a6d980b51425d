"""Rejection sampling's pure parts (cluster/output/rejection.py) and its files
(cluster/output/trace_parts.py), on small cases worked out by hand."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.output.run_dir import GENERATE_OUTPUTS, RunDirError, claim_output_dir
from cluster.output.trace_parts import (PROGRESS_FILE, ProgressError, TraceParts, finished_prompts, read_progress,
                                        trace_schema)
from cluster.output.rejection import (DUPLICATE, INCORRECT, KEPT, NOT_SHORTEST, OVER_CAP, Scored, field_column,
                                   messages, pass_rate_histogram, prompt_record, summarize, summary_markdown,
                                   trace_rows, verdicts)


def scored(text, tokens, correct, reward=None):
    reward = (1.0 if correct else 0.0) if reward is None else reward
    return Scored(text=text, num_tokens=tokens, finish_reason="stop", reward=reward,
                  components={"math": 1.0 if correct else 0.0}, correct=correct)


# Six samples of one prompt: b and d are the same text; a, b, d, e verified.
GROUP = [scored("a", 5, True), scored("b", 3, True), scored("c", 2, False), scored("b", 3, True),
         scored("e", 3, True), scored("f", 9, False)]


def test_all_correct_keeps_every_verified_completion_once_in_sampling_order():
    assert verdicts(GROUP, keep="all_correct", max_per_prompt=0, dedupe=True) == \
        [KEPT, KEPT, INCORRECT, DUPLICATE, KEPT, INCORRECT]
    assert verdicts(GROUP, keep="all_correct", max_per_prompt=0, dedupe=False) == \
        [KEPT, KEPT, INCORRECT, KEPT, KEPT, INCORRECT]


def test_the_cap_counts_distinct_traces():
    # Distinct verified: a, b, e; a cap of 2 keeps a and b, the repeat of b is a duplicate, e over the cap.
    assert verdicts(GROUP, keep="all_correct", max_per_prompt=2, dedupe=True) == \
        [KEPT, KEPT, INCORRECT, DUPLICATE, OVER_CAP, INCORRECT]
    # Without dedupe the repeat of b counts: a, b, b are kept and e is over a cap of 3.
    assert verdicts(GROUP, keep="all_correct", max_per_prompt=3, dedupe=False) == \
        [KEPT, KEPT, INCORRECT, KEPT, OVER_CAP, INCORRECT]


def test_shortest_correct_keeps_the_fewest_tokens_and_the_first_of_a_tie():
    # c (2 tokens) is shorter but wrong; b, its repeat and e all have 3: b was sampled first.
    assert verdicts(GROUP, keep="shortest_correct", max_per_prompt=0, dedupe=True) == \
        [NOT_SHORTEST, KEPT, INCORRECT, DUPLICATE, NOT_SHORTEST, INCORRECT]
    assert verdicts([scored("x", 4, False)], keep="shortest_correct", max_per_prompt=0, dedupe=True) == [INCORRECT]
    with pytest.raises(ValueError, match="unknown keep policy"):
        verdicts(GROUP, keep="longest", max_per_prompt=0, dedupe=True)


def test_a_prompt_record_counts_what_was_sampled_kept_and_dropped():
    marks = verdicts(GROUP, keep="all_correct", max_per_prompt=2, dedupe=True)
    assert prompt_record(7, GROUP, marks) == {
        "prompt_index": 7, "sampled": 6, "correct": 4, "kept": 2, "duplicate": 1, "over_cap": 1, "not_shortest": 0,
        "sampled_tokens": 5 + 3 + 2 + 3 + 3 + 9, "kept_tokens": 5 + 3}


def test_trace_rows_carry_the_raw_prompt_messages_rewards_and_the_row_fields():
    marks = verdicts(GROUP, keep="shortest_correct", max_per_prompt=0, dedupe=True)
    rows = trace_rows(7, "1+2", {"answer": "3", "prompt": "clash"}, GROUP, marks, teacher="m", system_prompt="Be brief.")
    assert rows == [{
        "prompt": "1+2", "completion": "b",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2"},
                     {"role": "assistant", "content": "b"}],
        "prompt_index": 7, "sample_index": 1, "reward": 1.0, "reward/math": 1.0, "num_tokens": 3,
        "finish_reason": "stop", "teacher": "m", "pass_rate": 4 / 6, "answer": "3", "field/prompt": "clash"}]
    dropped = trace_rows(7, "1+2", {"answer": "3"}, GROUP, marks, teacher="m", kept=False)
    assert [(r["sample_index"], r["rejected"]) for r in dropped] == \
        [(0, NOT_SHORTEST), (2, INCORRECT), (3, DUPLICATE), (4, NOT_SHORTEST), (5, INCORRECT)]
    assert messages("q", "a") == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert field_column("answer") == "answer" and field_column("reward/x") == "field/reward/x"


def test_the_summary_of_three_prompts():
    # K = 2: prompt 0 has both verified (distinct), prompt 1 one, prompt 2 none.
    groups = [[scored("p", 4, True), scored("q", 6, True)], [scored("r", 2, False), scored("s", 8, True)],
              [scored("t", 1, False), scored("t", 1, False)]]
    records = [prompt_record(i, g, verdicts(g, keep="all_correct", max_per_prompt=0, dedupe=True))
               for i, g in enumerate(groups)]
    assert pass_rate_histogram(records, 2) == {"0/2": 1, "1/2": 1, "2/2": 1}
    summary = summarize(records, 2)
    assert summary == {
        "prompts": 3, "sampled": 6, "correct": 3, "kept": 3, "sampled_tokens": 22, "kept_tokens": 18,
        "kept_fraction": 0.5, "verified_fraction": 0.5, "prompts_with_traces": 2,
        "dropped": {"incorrect": 3, "duplicate": 0, "over_cap": 0, "not_shortest": 0}, "kept_tokens_mean": 6.0,
        "pass_rate_histogram": {"0/2": 1, "1/2": 1, "2/2": 1}}
    report = summary_markdown(summary, "teacher-model")
    assert "| kept | 3 (50.0% of sampled), 18 tokens, 6.0 per trace |" in report
    assert "| dropped | 3 incorrect |" in report and "| 1/2 | 1 |" in report
    assert summarize([], 4)["kept_fraction"] == 0.0


# ---------------------------------------------------------------------------------------
# The parts on disk


def _parts(tmp_path, rejected=False):
    fields = pa.schema([("answer", pa.string()), ("numbers", pa.list_(pa.int64()))])
    return TraceParts(tmp_path, trace_schema(["math"], fields),
                      trace_schema(["math"], fields, rejected=True) if rejected else None)


def _chunk(parts, number, indices):
    traces, rejected, records = [], [], []
    for i in indices:
        marks = verdicts(GROUP, keep="all_correct", max_per_prompt=0, dedupe=True)
        fields = {"answer": str(i), "numbers": [i, i + 1]}
        traces += trace_rows(i, f"q{i}", fields, GROUP, marks, teacher="m")
        rejected += trace_rows(i, f"q{i}", fields, GROUP, marks, teacher="m", kept=False)
        records.append(prompt_record(i, GROUP, marks))
    return parts.write_chunk(number, traces, rejected if parts.rejected_schema else None, records)


def test_chunks_merge_into_one_table_by_prompt_and_sample(tmp_path):
    parts = _parts(tmp_path, rejected=True)
    parts.start({"settings": {"k": 1}})
    _chunk(parts, 0, [3, 1])
    parts.write_chunk(1, [], [], [])  # a chunk that kept nothing still reads back
    _chunk(parts, 2, [0])
    header, chunks = read_progress(tmp_path)
    assert header == {"settings": {"k": 1}} and [c["chunk"] for c in chunks] == [0, 1, 2]
    assert parts.merge(chunks) == {"traces.parquet": 9, "rejected.parquet": 9}
    table = pq.read_table(tmp_path / "traces.parquet")
    assert [(r["prompt_index"], r["sample_index"]) for r in table.to_pylist()] == \
        [(p, s) for p in (0, 1, 3) for s in (0, 1, 4)]
    row = table.to_pylist()[0]
    assert row["numbers"] == [0, 1] and row["messages"][1] == {"role": "assistant", "content": "a"}
    assert table.schema.field("messages").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    assert set(pq.read_table(tmp_path / "rejected.parquet").column("rejected").to_pylist()) == {INCORRECT, DUPLICATE}


def test_a_killed_run_leaves_only_whole_chunks(tmp_path):
    parts = _parts(tmp_path)
    parts.start({"settings": {}})
    _chunk(parts, 0, [0, 1])
    # Killed after chunk 1's part was renamed into place but before its progress line, and while
    # chunk 2's line was being written; a temporary of a part half written lies there too.
    pq.write_table(pq.read_table(parts.parts / "traces-000000.parquet"), parts.parts / "traces-000001.parquet")
    (parts.parts / ".traces-000002.parquet.tmp-99").write_bytes(b"PAR1")
    with open(tmp_path / PROGRESS_FILE, "a") as handle:
        handle.write('{"chunk": 2, "traces": "traces-0000')
    assert finished_prompts(tmp_path) == 2
    header, chunks = parts.load()
    assert [c["chunk"] for c in chunks] == [0]
    assert sorted(p.name for p in parts.parts.iterdir()) == ["traces-000000.parquet"]
    assert len((tmp_path / PROGRESS_FILE).read_text().splitlines()) == 2  # header and chunk 0
    (tmp_path / PROGRESS_FILE).write_text(json.dumps({"chunk": 0}) + "\n")
    with pytest.raises(ProgressError, match="no header line"):
        read_progress(tmp_path)


def test_claiming_refuses_unfinished_work_without_resume_and_resume_without_work(tmp_path):
    out = tmp_path / "gen"
    work = lambda path: f"{finished_prompts(path)} prompts done" if finished_prompts(path) else ""  # noqa: E731
    with pytest.raises(RunDirError, match="does not exist; there is no run to resume"):
        claim_output_dir(out, resume=True, overwrite=False, outputs=GENERATE_OUTPUTS, progress=work)
    with claim_output_dir(out, resume=False, overwrite=False, outputs=GENERATE_OUTPUTS, progress=work):
        parts = _parts(out)
        parts.start({})  # killed before its first chunk was done
    with pytest.raises(RunDirError, match="holds no finished work to resume from"):
        claim_output_dir(out, resume=True, overwrite=False, outputs=GENERATE_OUTPUTS, progress=work)
    with claim_output_dir(out, resume=False, overwrite=False, outputs=GENERATE_OUTPUTS, progress=work):
        assert not (out / PROGRESS_FILE).exists()  # nothing finished: a fresh start replaces it
        parts.start({})
        _chunk(parts, 0, [0, 1])
    with pytest.raises(RunDirError, match=r"holds an earlier run \(2 prompts done\); pass --resume"):
        claim_output_dir(out, resume=False, overwrite=False, outputs=GENERATE_OUTPUTS, progress=work)
    with claim_output_dir(out, resume=True, overwrite=False, outputs=GENERATE_OUTPUTS, progress=work):
        assert (out / "parts").is_dir()
    (out / "mine.txt").write_text("the user's")
    with claim_output_dir(out, resume=False, overwrite=True, outputs=GENERATE_OUTPUTS, progress=work):
        assert not (out / PROGRESS_FILE).exists() and not (out / "parts").exists()
    assert (out / "mine.txt").read_text() == "the user's"
