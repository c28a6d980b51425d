"""`aha generate` refuses bad input in one line, exit code 2, before Ray starts and before its
output directory is made or touched."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.inputs.tiny_recipe import SAMPLING_ONLY, write_tiny_recipe

AHA = str(Path(sys.executable).with_name("aha"))
RECIPE = {
    **SAMPLING_ONLY, "data.train_path": "{root}/train.parquet", "data.eval_path": None,
    "rollout.max_new_tokens": 6, "rollout.enforce_eager": None, "reward": {"weights": {"arithmetic": 1.0}},
    "cluster": {"num_cpus": 4}, "generate.samples_per_prompt": 2, "run.output_dir": "{root}/gen",
}


@pytest.fixture
def home(tmp_path, tiny_model_dir):
    pq.write_table(pa.Table.from_pylist([{"prompt": "1+2", "answer": "3"}]), tmp_path / "train.parquet")
    write_tiny_recipe(tmp_path / "recipe.toml", {**RECIPE, "model.path": str(tiny_model_dir)})
    return tmp_path


def refused(home, *args) -> str:
    """Run `aha generate` expecting a one-line refusal; returns the line."""
    done = subprocess.run([AHA, "generate", str(home / "recipe.toml"), *args], capture_output=True, text=True,
                          timeout=300, cwd=home)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert done.stderr.startswith("aha: error: ") and "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize("case, args, says", [
    ("missing model", ["--model.path", "/nonexistent/model"], "model.path: '/nonexistent/model' does not exist"),
    ("missing prompt column", ["--data.prompt_column", "question"], "prompt column 'question'"),
    ("missing reward field", ["--reward.weights", '{ countdown = 1.0 }'], "needs the row field"),
    ("no prompt file", ["--data.train_path", ""], "data.train_path"),
    ("one trace per prompt", ["--generate.keep", "shortest_correct", "--generate.max_per_prompt", "2"],
     "generate.max_per_prompt: 2 with generate.keep = 'shortest_correct'"),
    ("resume and overwrite", ["--resume", "--overwrite"], "pass one of them"),
    ("nothing to resume", ["--resume"], "does not exist; there is no run to resume"),
])
def test_bad_input_is_one_line_and_writes_nothing(home, case, args, says):
    assert says in refused(home, *args), case
    assert not (home / "gen").exists()


def test_an_empty_data_set_is_refused(home):
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
                   home / "train.parquet")
    assert "the dataset has no rows" in refused(home)
    assert not (home / "gen").exists()


def test_a_directory_aha_did_not_write_is_left_alone(home):
    (home / "gen").mkdir()
    (home / "gen" / "notes.txt").write_text("mine")
    assert "is not empty and was not made by aha" in refused(home)
    assert [p.name for p in (home / "gen").iterdir()] == ["notes.txt"]


def test_a_training_run_directory_is_not_generates(home):
    (home / "gen" / "checkpoints").mkdir(parents=True)
    (home / "gen" / ".aha-run").write_text("{}\n")
    (home / "gen" / "recipe.json").write_text("{}")
    assert "holds a training run (checkpoints)" in refused(home)
    assert (home / "gen" / "recipe.json").read_text() == "{}"
