"""`aha export`: a run's checkpoint as a Hugging Face model directory, and every way it refuses.

The checkpoints here are laid out as the learner writes them under ZeRO 0-2 (the whole module
state in `mp_rank_00_model_states.pt`); the real DeepSpeed files are exported in
tests/test_stack_loop.py (ZeRO-2) and tests/test_stack_sft.py (ZeRO-3, two ranks).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster.commands.export import export_checkpoint
from cluster.output.base_model_files import save_model_files
from cluster.output.checkpoints import CheckpointError, write_driver_state
from cluster.output.run_dir import RunDirError
from cluster.recipe import load_recipe, recipe_to_dict

AHA = str(Path(sys.executable).with_name("aha"))


def make_run(tmp_path: Path, model_dir: Path, steps=(2, 4)) -> Path:
    """A run directory as `aha train` leaves it, with checkpoints whose weights are the tiny
    model's scaled by the step (so each step's export is recognisable)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".aha-run").write_text("{}")
    recipe = load_recipe(None, ["--model.path", str(model_dir), "--data.train_path", "t.parquet",
                                "--cluster.num_cpus", "8"])
    (run / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe)))
    save_model_files(run / "model-files", str(model_dir), AutoTokenizer.from_pretrained(model_dir),
                     trust_remote_code=False)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    for step in steps:
        tag = run / "checkpoints" / f"version-{step}"
        tag.mkdir()
        torch.save({"module": {k: v * step for k, v in base.items()}}, tag / "mp_rank_00_model_states.pt")
        (tag / "rng_rank0.pt").write_bytes(b"rng")
        write_driver_state(tag, {"step": step, "sampler": {}, "weight_version": step})
    return run


def test_the_newest_or_a_named_checkpoint_becomes_a_loadable_model(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).state_dict()
    for step, out in ((None, tmp_path / "newest"), (2, tmp_path / "two")):
        path = export_checkpoint(run, out, step=step)
        expected = 4 if step is None else 2
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        for name, value in model.state_dict().items():
            assert torch.equal(value, base[name] * expected), name
        assert json.loads((path / "aha_export.json").read_text())["step"] == expected
        assert AutoTokenizer.from_pretrained(path)("4+7=").input_ids == AutoTokenizer.from_pretrained(
            tiny_model_dir)("4+7=").input_ids
        assert (path / "generation_config.json").is_file()
    assert set(load_file(tmp_path / "two" / "model.safetensors")) <= set(base)


def _refused(*args) -> str:
    done = subprocess.run([AHA, "export", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_bad_exports_are_one_line_and_touch_nothing(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir)
    assert "keeps no checkpoint of step 3 (kept steps: 2, 4)" in _refused(run, tmp_path / "o", "--step", "3")
    assert "is not a run directory of aha" in _refused(tmp_path, tmp_path / "o")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert "exists and is not a model aha exported" in _refused(run, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    export_checkpoint(run, tmp_path / "e")
    assert "holds an earlier export; pass --overwrite" in _refused(run, tmp_path / "e")
    export_checkpoint(run, tmp_path / "e", step=2, overwrite=True)
    assert json.loads((tmp_path / "e" / "aha_export.json").read_text())["step"] == 2
    (run / "checkpoints" / "version-4" / "mp_rank_00_model_states.pt").write_bytes(b"garbage")
    assert "checkpoint '" in _refused(run, tmp_path / "o2") and not (tmp_path / "o2").exists()
    assert not list(tmp_path.glob(".o2.*"))  # no staging directory left behind


def test_a_run_without_checkpoints_has_nothing_to_export(tiny_model_dir, tmp_path):
    run = make_run(tmp_path, tiny_model_dir, steps=())
    with pytest.raises(CheckpointError, match="has no complete checkpoint to export"):
        export_checkpoint(run, tmp_path / "o")
    with pytest.raises(RunDirError, match="not a run directory"):
        export_checkpoint(tmp_path / "nope", tmp_path / "o")
