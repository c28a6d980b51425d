"""`aha pipeline` on the real stack: two short GRPO stages, the second starting from the first's
final/, then the held-out evaluation of the base model and both stages' models side by side; a
rerun skips everything it finished, and a changed finished stage is refused in one line.

Only `train` stages here: they are the cheapest that make a model (each vLLM engine start is
about 40 s on CPU). The generate and sft kinds plug into the same table
(cluster/recipe/pipeline.py); their drivers have their own stack tests."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))

# Two short GRPO stages of the tiny recipe: smaller steps, one learner rank, a small held-out set.
RECIPE = {
    "data.synthetic.train_rows": 32, "data.synthetic.eval_rows": 4,
    "rollout.group_size": 2, "rollout.prompts_per_step": 2, "rollout.max_new_tokens": 8,
    "learner.num_ranks": None,
    "eval": {"num_prompts": 4},
    "run": None,
    "pipeline": {"name": "two", "output_dir": "{root}/pipe", "stages": ["rl1", "rl2"]},
    "stages.rl1.kind": "train",
    "stages.rl2": {"kind": "train", "run": {"steps": 1}, "learner": {"lr": 5e-5}, "rollout": {"top_p": 0.95}},
}


def _pipeline(home: Path, steps1: int = 1, timeout: int = 1200):
    recipe = write_tiny_recipe(home / "pipeline.toml", {**RECIPE, "stages.rl1.run.steps": steps1})
    started = time.monotonic()
    done = subprocess.run([AHA, "pipeline", str(recipe)], capture_output=True, text=True, timeout=timeout, cwd=home)
    return done, time.monotonic() - started


def _mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*")) if p.is_file()}


def test_two_stages_end_to_end_then_a_rerun_skips_them(tmp_path):
    done, _ = _pipeline(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    pipe = tmp_path / "pipe"
    lines = [line for line in done.stdout.splitlines() if line.startswith("[aha] pipeline two:")]
    assert lines[0].startswith("[aha] pipeline two: stage 1/2 rl1 (train): starting, from the base model")
    assert any(line.startswith("[aha] pipeline two: stage 2/2 rl2 (train): starting, from stage rl1's model")
               for line in lines)
    assert any("stage 1/2 rl1 (train): finished in" in line for line in lines)
    assert any("stage 2/2 rl2 (train): finished in" in line for line in lines)

    # Each stage ran in its own directory, the second from the first's final/.
    for stage, model in (("rl1", str(tmp_path / "model")), ("rl2", str(pipe / "rl1" / "final"))):
        saved = json.loads((pipe / stage / "recipe.json").read_text())
        assert saved["model"]["path"] == model and saved["run"]["output_dir"] == str(pipe / stage)
        assert (pipe / stage / "final" / "config.json").is_file()
        assert [r["step"] for r in map(json.loads, (pipe / stage / "metrics.jsonl").read_text().splitlines())] \
            == [0, 1]
        assert json.loads((pipe / stage / ".aha-stage-done.json").read_text())["stage"] == stage
    assert json.loads((pipe / "rl2" / "recipe.json").read_text())["learner"]["lr"] == 5e-5
    # rl1's final/ as both libraries read it: rl2's engine loaded it with vLLM and its learner with
    # transformers, and nothing was pushed before rl2's first step. On the tokens the engine sampled
    # there, the two give the same logprobs to fp32 noise: the export is the learner's weights, laid
    # out as both read them.
    rl2_step1 = [json.loads(line) for line in (pipe / "rl2" / "metrics.jsonl").read_text().splitlines()][1]
    print("rl2 step 1 rollout_logprob_gap_max:", rl2_step1["learner/rollout_logprob_gap_max"])
    assert 0 < rl2_step1["learner/rollout_logprob_gap_max"] < 1e-3
    assert "tiny" not in json.loads((pipe / "rl2" / "recipe.json").read_text())["model"]

    # The base model and both stages' models, side by side on the same held-out problems.
    evaluated = json.loads((pipe / "eval" / "eval.json").read_text())["models"]
    assert [m["path"] for m in evaluated] == [str(tmp_path / "model"), str(pipe / "rl1" / "final"),
                                              str(pipe / "rl2" / "final")]
    # rl1 evaluated the base model before its first step and its own after its last, with the
    # pipeline's settings: taken from its metrics and heldout/. rl2 samples with another top_p,
    # an evaluation setting, so its model is evaluated afresh.
    assert [m["measured_by"] for m in evaluated] == ["rl1, before its first step", "rl1, after its step 1",
                                                     "aha eval"]
    in_run = [json.loads(line) for line in (pipe / "rl1" / "metrics.jsonl").read_text().splitlines()]
    for model, record in zip(evaluated, in_run):
        assert model["metrics"] == {k: v for k, v in record.items() if k.startswith("eval/")}
    completions = pq.read_table(pipe / "eval" / "completions.parquet").to_pylist()
    for model in evaluated:
        greedy = [r for r in completions if r["model"] == model["path"] and r["kind"] == "greedy"]
        assert len(greedy) == 4 and sum(r["correct"] for r in greedy) / 4 == model["metrics"]["eval/accuracy"]
    kept = pq.read_table(pipe / "rl1" / "heldout" / "step-000001.parquet").to_pylist()
    assert [r["completion"] for r in kept] == [r["completion"] for r in completions
                                               if r["model"] == evaluated[1]["path"]]
    table = (pipe / "pipeline.md").read_text().splitlines()
    assert [row.split(" | ")[0] for row in table[2:]] == ["| base", "| rl1", "| rl2"]
    for row, model in zip(table[2:], evaluated):
        assert f"{100 * model['metrics']['eval/accuracy']:.1f}%" in row
        assert f"{model['metrics']['eval/response_length_mean']:.1f}" in row
    assert "\n".join(table) in done.stdout
    assert (pipe / "pipeline.png").read_bytes()[:4] == b"\x89PNG"
    document = json.loads((pipe / "pipeline.json").read_text())
    assert document["status"] == "done" and [r["stage"] for r in document["heldout"]] == ["base", "rl1", "rl2"]

    # Rerun: nothing to do, so nothing is started and nothing in the stages is touched.
    before = {stage: _mtimes(pipe / stage) for stage in ("rl1", "rl2", "eval")}
    again, _ = _pipeline(tmp_path, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "[aha] pipeline two: stage 1/2 rl1 (train): skipped, finished before" in again.stdout
    assert "[aha] pipeline two: stage 2/2 rl2 (train): skipped, finished before" in again.stdout
    assert "held-out evaluation of 3 models: skipped, done before" in again.stdout
    assert "starting" not in again.stdout and "[aha] eval" not in again.stdout
    assert {stage: _mtimes(pipe / stage) for stage in before} == before
    assert (pipe / "pipeline.md").read_text().splitlines() == table

    # A finished stage whose definition changed: one line naming the key, nothing touched.
    changed, _ = _pipeline(tmp_path, steps1=2, timeout=300)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1, changed.stderr
    assert changed.stderr.startswith("aha: error: run.steps: stage 'rl1' finished with 1 and the recipe now says 2;")
    assert "--from rl1" in changed.stderr
    assert {stage: _mtimes(pipe / stage) for stage in before} == before
