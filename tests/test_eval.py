"""`aha eval` without engines: bad input refused in one line through the real command (nothing
starts, nothing is written), the output directory rules, and the report files from plain
results. The real-stack evaluation is in tests/test_stack_eval.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.commands.eval import default_output_dir
from cluster.inputs.tiny_recipe import SAMPLING_ONLY, write_tiny_recipe
from cluster.output.eval_report import completions_table, eval_table, metric_columns, write_eval_outputs
from cluster.output.run_dir import EVAL_OUTPUTS, RunDirError, claim_output_dir
from cluster.recipe import Recipe
from cluster.recipe.schema import RunConfig

AHA = str(Path(sys.executable).with_name("aha"))
GSM8K = Path(__file__).resolve().parent.parent / "deploy/recipes/gsm8k-qwen2.5-1.5b.toml"
ROWS = [{"prompt": f"{a}+{b}", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6)]]
RECIPE = {
    **SAMPLING_ONLY, "data.train_path": "{root}/eval.parquet", "data.eval_path": "{root}/eval.parquet",
    "rollout.max_new_tokens": 16, "rollout.enforce_eager": None, "reward": {"weights": {"arithmetic": 1.0}},
    "cluster": {"num_cpus": 4}, "run.name": "tiny",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_model_dir) -> Path:
    home = tmp_path_factory.mktemp("evaluser")
    pq.write_table(pa.Table.from_pylist(ROWS), home / "eval.parquet")
    write_tiny_recipe(home / "recipe.toml", {**RECIPE, "model.path": str(tiny_model_dir)})
    return home


def refused(home: Path, *args: str) -> str:
    done = subprocess.run([AHA, "eval", str(home / "recipe.toml"), *args], capture_output=True, text=True,
                          timeout=120, cwd=home)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert done.stderr.startswith("aha: error: ") and "Traceback" not in done.stderr
    return done.stderr


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_bad_input_is_one_line_and_writes_nothing(home, tiny_model_dir):
    out = home / "out"
    assert "data.eval_path: aha eval needs a held-out data set" in refused(home, "--data.eval_path", "",
                                                                           "--out", str(out))
    # The second of two models does not exist: refused before anything is evaluated.
    missing = home / "no-such-model"
    assert f"--model: '{missing}' does not exist" in refused(home, "--model", str(tiny_model_dir), "--model",
                                                              str(missing), "--out", str(out))
    assert "--model: 'a/b' is given twice" in refused(home, "--model", "a/b", "--model", "a/b", "--out", str(out))
    assert "data file" in refused(home, "--data.eval_path", str(home / "nope.parquet"), "--out", str(out))
    # A prompt too long for the model's tokenizer is found before any engine starts.
    too_long = refused(home, "--data.max_prompt_tokens", "64", "--out", str(out))
    assert "row 0 is 342 tokens after the template" in too_long
    assert not out.exists()
    # An output directory holding the user's own files is never used, and is left as it was.
    mine = home / "mine"
    mine.mkdir()
    (mine / "eval.json").write_text('{"my": "numbers"}')
    before = tree(mine)
    assert f"--out: '{mine}' is not empty and was not made by aha" in refused(home, "--out", str(mine))
    assert tree(mine) == before


def test_default_output_directory_sits_beside_the_run(tmp_path):
    assert default_output_dir(Recipe(run=RunConfig(name="zero"))) == Path("runs/zero-eval")
    moved = Recipe(run=RunConfig(name="zero", output_dir=str(tmp_path / "x" / "rl")))
    assert default_output_dir(moved) == tmp_path / "x" / "rl-eval"


def test_an_earlier_evaluation_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "eval"
    with claim_output_dir(out, resume=False, overwrite=False, outputs=EVAL_OUTPUTS, key="--out"):
        for name in EVAL_OUTPUTS:
            (out / name).write_text("earlier")
        (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"^--out: .* holds an earlier evaluation \(eval.json\); pass --overwrite"):
        claim_output_dir(out, resume=False, overwrite=False, outputs=EVAL_OUTPUTS, key="--out")
    assert all((out / name).read_text() == "earlier" for name in EVAL_OUTPUTS)
    with claim_output_dir(out, resume=False, overwrite=True, outputs=EVAL_OUTPUTS, key="--out"):
        assert not any((out / name).exists() for name in EVAL_OUTPUTS)
    assert (out / "notes.txt").read_text() == "mine"  # only what aha eval writes is replaced


def test_an_evaluation_in_a_run_directory_leaves_the_run_alone(tmp_path):
    run = tmp_path / "run"
    with claim_output_dir(run, resume=False, overwrite=False):
        (run / "checkpoints" / "version-1").mkdir(parents=True)
        (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with claim_output_dir(run, resume=False, overwrite=True, outputs=EVAL_OUTPUTS, key="--out"):
        pass
    assert (run / "metrics.jsonl").is_file() and (run / "checkpoints" / "version-1").is_dir()


RESULTS = [
    {"model": "base", "path": "/m/base", "metrics": {"eval/accuracy": 0.25, "eval/pass@2": 0.5, "eval/pass@10": 0.75,
                                                      "eval/maj@2": 0.25, "eval/acc@budget=16": 0.0,
                                                      "eval/acc@budget=8": 0.125, "eval/response_length_mean": 12.5,
                                                      "eval/reflection_rate": 0.0, "eval/num_prompts": 8}},
    {"model": "rl/final", "path": "/m/rl", "metrics": {"eval/accuracy": 0.875, "eval/pass@2": 1.0, "eval/pass@10": 1.0,
                                                        "eval/maj@2": 0.875, "eval/acc@budget=16": 0.5,
                                                        "eval/acc@budget=8": 0.25, "eval/response_length_mean": 40.0,
                                                        "eval/reflection_rate": 0.125, "eval/num_prompts": 8}},
]


def test_the_table_has_one_row_per_model_and_columns_in_numeric_order():
    titles = [title for _, title in metric_columns(RESULTS)]
    assert titles == ["accuracy", "pass@2", "pass@10", "maj@2", "acc@budget=8", "acc@budget=16", "mean length",
                      "reflection rate"]
    lines = eval_table(RESULTS).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| base | 25.0% | 50.0% | 75.0% | 25.0% | 12.5% | 0.0% | 12.5 | 0.0% |"
    assert lines[3].startswith("| rl/final | 87.5% | 100.0% |")


def test_the_outputs_are_written_whole(tmp_path):
    record = {"model": "base", "prompt_index": 0, "prompt": "1+2", "kind": "greedy", "sample_index": 0,
              "max_new_tokens": 12, "completion": "x", "correct": False, "answer": None, "reward": 0.0,
              "num_tokens": 1, "finish_reason": "length"}
    write_eval_outputs(tmp_path, {"num_prompts": 8, "k": [2, 10]}, RESULTS, [record])
    document = json.loads((tmp_path / "eval.json").read_text())
    assert [m["model"] for m in document["models"]] == ["base", "rl/final"]
    assert document["models"][1]["metrics"]["eval/accuracy"] == 0.875 and document["settings"]["k"] == [2, 10]
    assert pq.read_table(tmp_path / "completions.parquet").to_pylist() == [record]
    assert completions_table([record]).schema.field("answer").type == pa.string()  # all-null stays a string
    assert (tmp_path / "eval.md").read_text().count("\n") == 4
    assert (tmp_path / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(EVAL_OUTPUTS)  # no temporaries left


def test_the_next_models_engines_start_beside_this_ones_evaluation_only_where_two_fit(home):
    from cluster.commands.eval import _plan
    from cluster.startup.preflight import memory_bytes
    from cluster.recipe import load_recipe

    def node(cpus: float, gpus: float = 0.0) -> SimpleNamespace:  # one head node, as `ray.nodes()` gives it
        table = [{"NodeID": "n" * 8, "Alive": True,
                  "Resources": {"CPU": cpus, "GPU": gpus, "node:__internal_head__": 1.0}}]
        return SimpleNamespace(nodes=lambda: table)

    gpu = load_recipe(GSM8K)  # 4 engines of 1 GPU each
    plan, at_once = _plan(gpu, node(192, 8), 3)
    assert at_once == 2 and plan.nodes_of("rollout") == ["n" * 8] * 8
    assert _plan(gpu, node(192, 4), 3)[1] == 1  # room for one model's engines only
    assert _plan(gpu, node(192, 8), 1)[1] == 1  # no next model
    shared = load_recipe(GSM8K, ["--cluster.rollout_gpus", "0.5", "--rollout.gpu_memory_utilization", "0.4"])
    assert _plan(shared, node(192, 8), 3)[1] == 1  # two models' engines would share a GPU's memory
    cpu = load_recipe(home / "recipe.toml")  # one engine on this machine's CPUs, 0.2 GiB of KV cache
    assert _plan(cpu, node(4), 2)[1] == 2
    assert _plan(cpu, node(2), 2)[1] == 1  # 2 CPUs: one engine (1 CPU) and the scorer (1 CPU)
    _, available = memory_bytes()
    big = load_recipe(home / "recipe.toml", ["--rollout.kv_cache_gb", f"{0.75 * available / 2**30:.3f}"])
    assert _plan(big, node(4), 2)[1] == 1  # this machine's memory holds one such KV cache, not two


def test_budget_forcing_cuts_the_thinking_and_makes_the_model_answer(tiny_model_dir):
    from transformers import AutoTokenizer

    from cluster.roles.evaluation import forced_prompt
    from cluster.wire.samples import Sample

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, force = encode("4+7+2=? <think>"), encode("</think><answer>")

    def greedy(text: str) -> Sample:
        ids = encode(text)
        return Sample(prompt, ids, text, [0.0] * len(ids), "stop", 0)

    thinking = greedy("4+7=11 11+2=13</think><answer>13</answer>")
    ids, text = forced_prompt(prompt, thinking, 6, tokenizer, force, "</think>")
    assert ids == prompt + encode("4+7=11") + force and text == "4+7=11</think><answer>"
    ids, text = forced_prompt(prompt, thinking, 0, tokenizer, force, "</think>")  # budget 0: answer at once
    assert ids == prompt + force and text == "</think><answer>"
    # the thinking ended within the budget, or the whole completion did: its own answer stands
    assert forced_prompt(prompt, thinking, len(encode("4+7=11 11+2=13</think>")), tokenizer, force, "</think>") is None
    assert forced_prompt(prompt, greedy("</think><answer>11</answer>"), 30, tokenizer, force, "</think>") is None
