"""`aha eval` on the real stack: two tiny models, each on a vLLM rollout worker in a Ray actor,
graded by the reward scorer actor, compared in one call. Every number in eval.json is counted
again here by hand from the written completions, re-scored with the real reward functions, and
the thinking budgets are forced (s1): at budget 0 the answer is forced at once."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.inputs.tiny_model import build_tiny_model
from cluster.inputs.tiny_recipe import SAMPLING_ONLY, write_tiny_recipe
from cluster.output.eval_metrics import reflection_rate
from rewards.extract import extract_final_answer
from rewards.registry import REGISTRY, resolve_reward
from spec_helpers import tiny_spec

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))
ROWS = [{"prompt": f"{a}+{b}", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (4, 4), (9, 9)]]
NUM_PROMPTS, K, BUDGETS = 5, [2, 4], [0, 4]
FORCE = "</think><answer>"  # a random tiny model never ends its thinking itself: every budget forces
# A random tiny model never writes the right sum, so an arithmetic grade would be 0 everywhere and
# prove nothing. This reward is correct for about half of any texts, which makes accuracy, pass@k
# and maj@k non-trivial; it is a user reward, resolved and run like any other.
COIN_REWARD = """
def score(completion, answer, **fields):
    return 1.0 if (sum(map(ord, completion)) + int(answer)) % 2 == 0 else 0.0
"""
# The models to compare are given on the command line; the recipe's model.path is never read.
RECIPE = {
    **SAMPLING_ONLY, "model.path": "{root}/unused",
    "data.train_path": "{root}/eval.parquet", "data.eval_path": "{root}/eval.parquet",
    "reward.weights": {"eval_coin:score": 1.0, "arithmetic": 0.5},
    "eval": {"num_prompts": NUM_PROMPTS, "k": K, "budgets": BUDGETS, "force_answer": FORCE},
    "run.name": "tiny",
}


def test_two_models_side_by_side_match_a_hand_count(tmp_path, tiny_model_dir, monkeypatch):
    other = build_tiny_model(tmp_path / "other", tiny_spec(seed=7))
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "eval.parquet")
    (tmp_path / "eval_coin.py").write_text(COIN_REWARD)
    recipe = write_tiny_recipe(tmp_path / "recipe.toml", RECIPE)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}  # the scorer's workers import the user's reward
    done = subprocess.run([AHA, "eval", str(recipe), "--model", str(tiny_model_dir), "--model", str(other),
                           "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    models = [str(tiny_model_dir), str(other)]
    assert f"[aha] eval 1/2: {models[0]}" in done.stdout and f"[aha] eval 2/2: {models[1]}" in done.stdout
    # The cluster (4 CPUs) holds two models' engines, so the second model's started beside the
    # first's: by the time the first was evaluated they were (nearly) up, not a whole start away.
    assert "[aha] eval: each next model's engines start while the one before is evaluated" in done.stdout

    document = json.loads((out / "eval.json").read_text())
    assert [m["model"] for m in document["models"]] == models
    for result in document["models"]:  # each model's engines placed by the plan, and no learner
        assert set(result["placement"]["planned"]) == {"rollout", "scorer"}
        assert result["placement"]["placed"] == result["placement"]["planned"]
    waits = [result["engine_wait_s"] for result in document["models"]]
    print("seconds waited for each model's engines:", waits)
    assert waits[1] < 0.5 * waits[0], waits
    table = (out / "eval.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| {m}" for m in models]  # one row per model
    assert "\n".join(table) in done.stdout
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    completions = pq.read_table(out / "completions.parquet").to_pylist()
    assert 0 < sum(r["correct"] for r in completions) < len(completions)  # a count with something to count
    fields = {i: row for i, row in enumerate(ROWS)}
    monkeypatch.syspath_prepend(str(tmp_path))
    coin, arithmetic = resolve_reward("eval_coin:score"), REGISTRY["arithmetic"]
    for model, result in zip(models, document["models"]):
        mine = [r for r in completions if r["model"] == model]
        for r in mine:  # every flag and answer, recomputed from the completion itself
            row = fields[r["prompt_index"]]
            assert r["correct"] == (coin(r["completion"], **row) == 1.0)
            assert r["reward"] == pytest.approx(coin(r["completion"], **row) + 0.5 * arithmetic(r["completion"], **row))
            assert r["answer"] == extract_final_answer(r["completion"])
            assert r["prompt"] == ROWS[r["prompt_index"]]["prompt"]
        assert result["metrics"] == pytest.approx(hand_count(mine)), model
    # Each model was loaded by its own engines: the same seeded sampling gives different texts.
    sampled = {m: [r["completion"] for r in completions if r["model"] == m and r["kind"] == "sampled"] for m in models}
    assert sampled[models[0]] != sampled[models[1]]
    # A second call into the same directory keeps the first one's results unless told otherwise.
    again = subprocess.run([AHA, "eval", str(recipe), "--model", models[0], "--out", str(out)], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path, env=env)
    assert again.returncode == 2 and "holds an earlier evaluation (eval.json)" in again.stderr, again.stderr[-3000:]
    assert json.loads((out / "eval.json").read_text()) == document


def hand_count(rows: list[dict]) -> dict[str, float]:
    """The metrics from one model's completion rows, counted directly."""
    greedy = sorted((r for r in rows if r["kind"] == "greedy"), key=lambda r: r["prompt_index"])
    assert [r["prompt_index"] for r in greedy] == list(range(NUM_PROMPTS))  # the first eval.num_prompts rows
    budgets = {b: sorted((r for r in rows if r["kind"] == "budget" and r["max_new_tokens"] == b),
                         key=lambda r: r["prompt_index"]) for b in BUDGETS}
    for b, forced in budgets.items():
        assert len(forced) == NUM_PROMPTS
        for own, r in zip(greedy, forced):
            if own["num_tokens"] <= b:  # it ended within the budget: its own completion stands
                assert r["completion"] == own["completion"]
                continue
            thought = r["completion"][:r["completion"].index(FORCE)]  # its first b tokens, then the forcing
            assert own["completion"].startswith(thought) and (thought == "") == (b == 0)
            assert r["num_tokens"] > b
    sampled = {i: sorted((r for r in rows if r["kind"] == "sampled" and r["prompt_index"] == i),
                         key=lambda r: r["sample_index"]) for i in range(NUM_PROMPTS)}
    assert all(len(s) == max(K) for s in sampled.values())
    counts = {
        "eval/num_prompts": NUM_PROMPTS,
        "eval/accuracy": mean(r["correct"] for r in greedy),
        **{f"eval/acc@budget={b}": mean(r["correct"] for r in forced) for b, forced in budgets.items()},
        "eval/response_length_mean": mean(r["num_tokens"] for r in greedy),
        "eval/truncated_fraction": mean(r["finish_reason"] == "length" for r in greedy),
        "eval/reflection_rate": reflection_rate([r["completion"] for r in greedy],
                                                ("wait", "let me check", "verify", "recheck")),
    }
    for k in K:
        n = max(K)
        counts[f"eval/pass@{k}"] = mean(1 - math.comb(n - c, k) / math.comb(n, k)
                                        for c in (sum(r["correct"] for r in s) for s in sampled.values()))
        counts[f"eval/maj@{k}"] = mean(majority_correct(s[:k]) for s in sampled.values())
    return counts


def majority_correct(samples: list[dict]) -> bool:
    """The most common answer among the samples (ties: the one seen first; no answer never
    wins) is correct, as graded on the first sample that gave it."""
    answers = [" ".join(s["answer"].split()) if s["answer"] and s["answer"].strip() else None for s in samples]
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return samples[answers.index(winner)]["correct"]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
