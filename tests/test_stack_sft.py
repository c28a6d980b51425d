"""`aha sft` end to end on the real stack: DeepSpeed learner ranks as Ray actors, the packed SFT
objective, held-out loss, held-out accuracy through a vLLM rollout worker that receives the
learner's weights, checkpoints, SIGKILL and --resume, and final/."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cluster.inputs.data import PromptSampler
from cluster.inputs.tasks import write_parquet
from cluster.inputs.tiny_recipe import write_tiny_recipe
from cluster.output.run_log import read_metrics

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))

# Every prompt sums to 2 and every trace answers 2: a pattern a random tiny model learns in a
# few steps, so held-out accuracy through the engines moves only if the SFT weights reach them.
PROMPTS = ["1+1", "0+2", "2+0", "1+0+1", "0+1+1", "1+1+0", "0+0+2", "2+0+0", "0+2+0"]
# The tiny recipe as an SFT run on the traces _world writes: a smaller model, short sequences,
# no synthetic data, no GRPO settings.
SFT = {
    "model.tiny": {"hidden_size": 64, "num_layers": 2},
    "data": {"template": "{prompt}=? <think>", "max_prompt_tokens": 32},
    "sft": {"train_path": "{root}/traces.parquet", "eval_path": "{root}/held.parquet", "epochs": 2, "max_length": 64},
    "rollout": {"max_new_tokens": 16, "max_model_len": 96, "kv_cache_gb": 0.05, "enforce_eager": True,
                "stop": ["</answer>"]},
    "reward.weights": {"arithmetic": 1.0},
    "algorithm": None,
    "learner.lr": 3e-3,
    "learner.micro_batch_size": 2,
    "eval": {"num_prompts": 9},
    "run.steps": None,
}


def _world(tmp_path: Path, *, rows: int, eval_prompts: bool, ranks: int, zero: int, batch: int, eval_every: int,
           checkpoint_every: int, overrides: dict | None = None) -> Path:
    traces = [{"prompt": PROMPTS[i % len(PROMPTS)], "completion": "2</think><answer>2</answer>" + " " * (i % 5),
               "reward": 1.0} for i in range(rows)]  # lengths differ, so rows pack unevenly over the ranks
    write_parquet(traces, tmp_path / "traces.parquet")
    write_parquet(traces[:6], tmp_path / "held.parquet")
    write_parquet([{"prompt": p, "answer": "2"} for p in PROMPTS], tmp_path / "eval.parquet")
    eval_path = {"data.eval_path": "{root}/eval.parquet"} if eval_prompts else {}
    return write_tiny_recipe(tmp_path / "recipe.toml", {
        **SFT, **eval_path, "learner.num_ranks": ranks, "learner.zero_stage": zero, "sft.batch_size": batch,
        "sft.eval_every": eval_every, "run.checkpoint_every": checkpoint_every, **(overrides or {})})


def _sampler_rows(num_rows: int, steps: int, batch: int) -> list[list[int]]:
    sampler = PromptSampler(list(range(num_rows)), seed=0, shuffle=True)
    return [sampler.next_batch(batch) for _ in range(steps)]


def test_sft_learns_reaches_the_engines_and_exports_final(tmp_path):
    recipe = _world(tmp_path, rows=45, eval_prompts=True, ranks=2, zero=3, batch=6, eval_every=5,
                    checkpoint_every=0)
    done = subprocess.run([AHA, "sft", str(recipe)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "run"
    metrics = read_metrics(run)
    steps = [m["step"] for m in metrics]
    assert steps == list(range(16))  # step 0 (before SFT) and 2 epochs x ceil(45 / 6) = 15 steps
    evals = [m for m in metrics if "eval/loss" in m]
    assert [m["step"] for m in evals] == [0, 5, 10, 15]
    assert evals[-1]["eval/loss"] < 0.5 * evals[0]["eval/loss"]  # held-out loss falls
    # The engines sampled with the learner's weights: a random model never answers; after SFT it does.
    assert evals[0]["eval/accuracy"] == 0.0 and evals[-1]["eval/accuracy"] >= 0.5
    assert sum(m["sequences"] for m in metrics[1:]) == 90
    assert [m["trace_rows"] for m in metrics[1:]] == _sampler_rows(45, 15, 6)[:15]
    assert metrics[-1]["learner/token_accuracy"] > 0.5 and metrics[-1]["learner/lr"] == pytest.approx(3e-3)
    assert (run / "plots" / "loss.png").is_file() and any((run / "tb").iterdir())
    assert "before SFT" in done.stdout and "[aha] done: model" in done.stdout
    # Placed by the plan: with held-out accuracy, SFT starts engines and scorers beside the ranks.
    placement = json.loads((run / "placement.json").read_text())
    node = placement["nodes"][0]["id"]
    assert placement["planned"] == {"rollout": [node], "learner": [node] * 2, "scorer": [node]}
    assert placement["placed"] == placement["planned"]

    # final/ is a Hugging Face model whose held-out NLL, in plain transformers, is the logged one.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cluster.inputs.traces import encode_traces, load_traces
    from cluster.recipe import load_recipe

    model = AutoModelForCausalLM.from_pretrained(run / "final", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    settings = load_recipe(recipe)
    held = encode_traces(load_traces(tmp_path / "held.parquet", settings.sft, settings.data.template), tokenizer,
                         template=settings.data.template, system_prompt="", path="held")
    nll = tokens = 0.0
    with torch.no_grad():
        for trace in held:
            ids = torch.tensor([trace.prompt_ids + trace.completion_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            picked = logp.gather(-1, targets[:, None])[:, 0][len(trace.prompt_ids) - 1:]
            nll, tokens = nll - float(picked.sum()), tokens + len(trace.completion_ids)
    assert nll / tokens == pytest.approx(evals[-1]["eval/loss"], abs=1e-4)

    # `aha export` of the last checkpoint (ZeRO-3: each rank holds a partition, which DeepSpeed's
    # zero_to_fp32 puts together) gives exactly final/'s weights.
    from safetensors.torch import load_file

    exported = subprocess.run([AHA, "export", str(run), str(tmp_path / "exported")], capture_output=True, text=True,
                              timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    mine, final = load_file(tmp_path / "exported" / "model.safetensors"), load_file(run / "final" / "model.safetensors")
    assert mine.keys() == final.keys() and all(torch.equal(mine[k], final[k]) for k in final)


def test_sigkill_and_resume_continue_the_data_order(tmp_path):
    recipe = _world(tmp_path, rows=40, eval_prompts=False, ranks=1, zero=2, batch=4, eval_every=0,
                    checkpoint_every=2)
    run = tmp_path / "run"
    process = subprocess.Popen([AHA, "sft", str(recipe)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    state = run / "checkpoints" / "version-2" / "driver-state.json"
    deadline = time.monotonic() + 600
    while not state.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state.is_file() and process.poll() is None, "the run never checkpointed, or finished before the kill"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(3)
    assert not (run / "final").exists()

    # A plain rerun over a run with checkpoints is refused in one line; --resume continues it.
    again = subprocess.run([AHA, "sft", str(recipe)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--resume" in again.stderr
    # The resumed run loses its learner rank before step 5's optimizer step: the group restarts
    # from version-4 (the resumed run's own checkpoint) and steps on from there, in the same run.
    done = subprocess.run([AHA, "sft", str(recipe), "--resume"], capture_output=True, text=True, timeout=900,
                          cwd=tmp_path, env={**os.environ, "AHA_CHAOS": "learner@train:5"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "[aha] chaos: killing learner" in done.stdout
    assert "[aha] learner group restarted from version-4 (step 4) in" in done.stdout, done.stdout[-3000:]
    metrics = [m for m in read_metrics(run) if m["step"] > 0]
    assert [m["step"] for m in metrics] == list(range(1, 21))  # 2 epochs x 40 / 4, each step once
    assert [m["restarts/learner"] for m in metrics[4:]] == [1] * 16
    assert [m["trace_rows"] for m in metrics] == _sampler_rows(40, 20, 4)  # the uninterrupted order
    assert (run / "final" / "config.json").is_file()


NO_MODEL = {"model.tiny": None}  # no tiny model to build at model.path


@pytest.mark.parametrize("overrides, recipe_overrides, message", [
    (("--sft.train_path", "nope.parquet"), None, "data file 'nope.parquet': no such file"),
    (("--sft.train_path", ""), None, "a recipe only for aha sft sets sft.train_path"),
    (("--sft.max_length", "8", "--sft.too_long", "error"), None, "over sft.max_length=8"),
    (("--sft.eval_path", "traces.parquet", "--sft.train_path", "traces.parquet"), None, "is the training file"),
    (("--model.path", "no/such/model"), NO_MODEL, "model.path"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, overrides, recipe_overrides, message):
    recipe = _world(tmp_path, rows=8, eval_prompts=False, ranks=1, zero=2, batch=4, eval_every=0,
                    checkpoint_every=0, overrides=recipe_overrides)
    done = subprocess.run([AHA, "sft", str(recipe), *overrides], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    # One error line (building the tiny model may print its progress bar before it).
    errors = [line for line in done.stderr.splitlines() if line.startswith("aha: error:")]
    assert done.returncode == 2 and len(errors) == 1 and done.stderr.strip().endswith(errors[0]), done.stderr[-3000:]
    assert message in errors[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
