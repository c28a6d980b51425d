"""`aha smoke` end to end in a subprocess: the stack check of a recipe, on the demo's recipe.

`make demo` itself (`aha train` on the demo recipe: pre-training, then GRPO) takes minutes and
is measured by hand (README "The demo"); its pieces are tested in test_pretrain.py and
test_stack_loop.py."""

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))
REPO = Path(__file__).resolve().parent.parent

# The tiny recipe on countdown prompts, within 2 CPUs.
RECIPE = {
    "data.max_prompt_tokens": 600, "data.synthetic": {"task": "countdown", "train_rows": 50, "eval_rows": 10},
    "rollout.prompts_per_step": None, "rollout.max_new_tokens": 16, "rollout.max_model_len": 640,
    "rollout.kv_cache_gb": 0.25,
    "reward": {"weights": {"countdown": 1.0}},
    "algorithm": None, "learner": None, "eval": None, "run": None,
    "cluster": {"num_cpus": 2, "learner_cpus": 0.5, "scorer_cpus": 0.5, "timeout_s": 300},
}


def test_the_demo_recipe_builds_its_inputs_and_samples_through_ray(tmp_path):
    # The demo's recipe; its relative paths land under the working directory. The smoke needs no
    # trained model, so it samples from the random initialisation and skips the pre-training.
    recipe = REPO / "deploy" / "recipes" / "arith-zero-cpu.toml"
    done = subprocess.run([AHA, "smoke", str(recipe), "--prompts", "2", "--run.seed", "3"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("[aha smoke]")]
    assert any("sampled 2 groups x 8" in line for line in lines), lines
    gap = float(re.search(r"logprob gap over \d+ tokens: (\S+)", done.stdout).group(1))
    assert gap <= 1e-3
    demo = tmp_path / "runs" / "demo"
    assert (demo / "base-model.init" / "config.json").is_file() and not (demo / "base-model").exists()
    train = pq.read_table(demo / "data" / "chain-sum-train.parquet")
    assert train.num_rows == 4000 and {"prompt", "answer"} <= set(train.column_names)
    held_out = pq.read_table(demo / "data" / "chain-sum-eval.parquet").column("prompt").to_pylist()
    assert len(held_out) == len(set(held_out)) == 256
    assert not set(held_out) & set(train.column("prompt").to_pylist())


def test_smoke_with_a_bad_recipe_exits_2_before_starting_anything(tmp_path):
    recipe = write_tiny_recipe(tmp_path / "recipe.toml", RECIPE)
    done = subprocess.run([AHA, "smoke", str(recipe), "--rollout.group_size", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "rollout.group_size" in done.stderr
    assert not (tmp_path / "model").exists()


def test_prompts_longer_than_the_limit_are_a_clear_error(tmp_path):
    recipe = write_tiny_recipe(tmp_path / "recipe.toml", RECIPE)
    done = subprocess.run([AHA, "smoke", str(recipe), "--data.max_prompt_tokens", "100"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "data.max_prompt_tokens=100" in done.stderr and "train.parquet" in done.stderr
