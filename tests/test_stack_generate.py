"""`aha generate` on the real stack: a tiny model on a vLLM rollout worker in a Ray actor, graded
by the reward scorer actor; killed with SIGKILL after its first chunk and resumed.

A random tiny model never writes the right sum, so "verified" here is a user reward that is 1.0
for about half of any texts (a parity of the characters), and for every text of a prompt whose
answer is a multiple of 3: what this checks is the pipeline — that exactly the completions the
correctness reward accepts are kept, by the policy, once each, with every column intact — not
that a model solves anything. Sampling 2 tokens from the top 2 gives at most 4 distinct texts
(fewer with an early EOS), so 6 samples always repeat one: the duplicates are real. Every kept
and dropped completion is scored again here with the reward functions themselves."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.inputs.tiny_recipe import SAMPLING_ONLY, write_tiny_recipe
from cluster.inputs.traces import load_traces
from cluster.recipe import Recipe
from rewards.registry import REGISTRY, resolve_reward

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))
ROWS = [{"prompt": f"{a}+{b}", "answer": str(a + b), "numbers": [a, b]}
        for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (4, 4), (9, 9), (7, 1), (6, 3), (8, 8)]]
NUM_PROMPTS, K, CHUNK, TOKENS = 8, 6, 2, 2  # the ninth row is never sampled
# COIN_DELAY slows each call down in the run that is killed, so the kill lands mid-run.
COIN_REWARD = """
import os, time
def score(completion, answer, **fields):
    time.sleep(float(os.environ.get("COIN_DELAY", "0")))
    return 1.0 if (sum(map(ord, completion)) + int(answer)) % 2 == 0 or int(answer) % 3 == 0 else 0.0
"""
RECIPE = {
    **SAMPLING_ONLY, "data.train_path": "{root}/train.parquet", "data.eval_path": None,
    "rollout.max_new_tokens": TOKENS, "rollout.top_k": 2,
    "reward.weights": {"generate_coin:score": 1.0, "arithmetic": 0.5},
    "generate": {"samples_per_prompt": K, "num_prompts": NUM_PROMPTS, "chunk_prompts": CHUNK, "keep_rejected": True},
    "run.output_dir": "{root}/gen",
}


def test_generate_killed_and_resumed_keeps_exactly_the_verified_traces_once(tmp_path, tiny_model_dir, monkeypatch):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "train.parquet")
    (tmp_path / "generate_coin.py").write_text(COIN_REWARD)
    recipe = write_tiny_recipe(tmp_path / "recipe.toml", {**RECIPE, "model.path": str(tiny_model_dir)})
    out, env = tmp_path / "gen", {**os.environ, "PYTHONPATH": str(tmp_path)}
    progress = out / "progress.jsonl"

    # Kill the whole process tree (driver, Ray, engine) once the first chunk is written.
    killed = subprocess.Popen([AHA, "generate", str(recipe)], cwd=tmp_path, env={**env, "COIN_DELAY": "0.15"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 600
    while _lines(progress) < 2 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _lines(progress) >= 2, killed.stderr.read()[-3000:] if killed.poll() is not None else "never wrote a chunk"
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    time.sleep(3)  # let Ray's orphaned daemons notice their driver is gone
    finished_before = _lines(progress) - 1
    assert 1 <= finished_before < NUM_PROMPTS // CHUNK, "the kill should land mid-run"
    assert not (out / "traces.parquet").exists()

    # Without --resume an unfinished run is neither continued nor replaced.
    again = subprocess.run([AHA, "generate", str(recipe)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env=env)
    assert again.returncode == 2 and again.stderr.count("\n") == 1, again.stderr[-3000:]
    assert "prompts done); pass --resume to continue it, --overwrite" in again.stderr

    done = subprocess.run([AHA, "generate", str(recipe), "--resume"], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert f"[aha] resuming: {finished_before * CHUNK} prompts done, " in done.stdout

    # Every prompt was sampled exactly once, over the killed run and the resumed one.
    chunks = [json.loads(line) for line in progress.read_text().splitlines()[1:]]
    assert sorted(r["prompt_index"] for c in chunks for r in c["prompts"]) == list(range(NUM_PROMPTS))
    traces = pq.read_table(out / "traces.parquet").to_pylist()
    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    assert len({(t["prompt_index"], t["completion"]) for t in traces}) == len(traces)
    for i in range(NUM_PROMPTS):  # each prompt's K samples, once each, kept or dropped
        indices = sorted(r["sample_index"] for r in traces + rejected if r["prompt_index"] == i)
        assert indices == list(range(K)), i

    monkeypatch.syspath_prepend(str(tmp_path))
    coin, arithmetic = resolve_reward("generate_coin:score"), REGISTRY["arithmetic"]
    source = ROWS[:NUM_PROMPTS]
    for row in traces + rejected:  # every column read back, every verdict recomputed
        data = source[row["prompt_index"]]
        verified = coin(row["completion"], **data) == 1.0
        assert row["prompt"] == data["prompt"] and row["answer"] == data["answer"] and row["numbers"] == data["numbers"]
        assert row["messages"] == [{"role": "user", "content": data["prompt"]},
                                   {"role": "assistant", "content": row["completion"]}]
        assert row["reward/generate_coin:score"] == coin(row["completion"], **data)
        assert row["reward/arithmetic"] == arithmetic(row["completion"], **data)
        assert row["reward"] == pytest.approx(row["reward/generate_coin:score"] + 0.5 * row["reward/arithmetic"])
        assert 1 <= row["num_tokens"] <= TOKENS and row["finish_reason"] in ("stop", "length")
        assert row["teacher"] == str(tiny_model_dir)
        samples = [r for r in traces + rejected if r["prompt_index"] == row["prompt_index"]]
        assert row["pass_rate"] == sum(coin(r["completion"], **data) == 1.0 for r in samples) / K
        if "rejected" not in row:
            assert verified, row
        elif row["rejected"] == "duplicate":  # verified, and the very text of a kept trace
            assert verified and any(t["completion"] == row["completion"] for t in samples if "rejected" not in t)
        else:
            assert row["rejected"] == "incorrect" and not verified, row
    assert 0 < len(traces) < NUM_PROMPTS * K  # something kept, something dropped
    placement = json.loads((out / "placement.json").read_text())  # placed by the plan, and no learner
    assert set(placement["planned"]) == {"rollout", "scorer"} and placement["placed"] == placement["planned"]
    reasons = Counter(r["rejected"] for r in rejected)
    assert reasons["duplicate"] > 0 and set(reasons) <= {"duplicate", "incorrect"}, reasons
    expected = ["prompt", "completion", "messages", "prompt_index", "sample_index", "reward", "reward/generate_coin:score",
                "reward/arithmetic", "num_tokens", "finish_reason", "teacher", "pass_rate", "answer", "numbers"]
    assert pq.read_schema(out / "traces.parquet").names == expected
    # `aha sft` reads the file in either shape: the raw prompt and the completion, or the turns.
    sft = Recipe().sft
    pairs = load_traces(out / "traces.parquet", replace(sft, shape="prompt_completion"), "r1_zero")
    chats = load_traces(out / "traces.parquet", replace(sft, shape="messages"), "r1_zero")
    assert [(r.prompt, r.completion) for r in pairs] == [(t["prompt"], t["completion"]) for t in traces]
    assert [r.messages for r in chats] == [t["messages"] for t in traces]

    summary = json.loads((out / "summary.json").read_text())
    counts = summary["summary"]
    assert (counts["prompts"], counts["sampled"], counts["kept"]) == (NUM_PROMPTS, NUM_PROMPTS * K, len(traces))
    assert counts["correct"] == sum(coin(r["completion"], **source[r["prompt_index"]]) == 1.0
                                    for r in traces + rejected)
    histogram = Counter(f"{round(t['pass_rate'] * K)}/{K}" for t in traces + rejected if t["sample_index"] == 0)
    assert counts["pass_rate_histogram"] == {f"{c}/{K}": histogram.get(f"{c}/{K}", 0) for c in range(K + 1)}
    assert summary["settings"]["samples_per_prompt"] == K and summary["settings"]["correctness"] == "generate_coin:score"
    assert (out / "generate.md").read_text().strip() in done.stdout
    assert json.loads((out / "recipe.json").read_text())["generate"]["samples_per_prompt"] == K


def _lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.endswith("}"))
    except OSError:
        return 0
