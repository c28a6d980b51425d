"""A run's output directory is the run's alone; checkpoints are complete or ignored; a resumed run
continues the same experiment. Plain files, no actors: the real-stack side is in
tests/test_stack_loop.py and tests/test_stack_resume.py."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.inputs.prepare import prepare_data
from cluster.output.checkpoints import (CheckpointError, complete_checkpoints, drop_newer_than, prune_checkpoints,
                                        read_driver_state)
from cluster.output.run_dir import (EVAL_OUTPUTS, LOCK_FILE, RUN_MARKER, RUN_OUTPUTS, RunDirError, check_claimable,
                                   claim_output_dir)
from cluster.recipe import load_recipe, recipe_to_dict
from cluster.recipe.resume import resume_conflicts
from checkpoint_helpers import fake_checkpoint

AHA = str(Path(sys.executable).with_name("aha"))
RECIPE = Path(__file__).resolve().parent.parent / "deploy" / "recipes" / "arith-zero-cpu.toml"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- claiming a directory -----------------------------------------------------------------------

def test_a_new_directory_is_made_marked_and_locked_against_a_second_run(tmp_path):
    out = tmp_path / "runs" / "a"
    with claim_output_dir(out, resume=False, overwrite=False):
        assert (out / RUN_MARKER).is_file()
        with pytest.raises(RunDirError, match=r"is in use by another aha run \(pid \d+ on .+ since"):
            claim_output_dir(out, resume=False, overwrite=False)
    with claim_output_dir(out, resume=False, overwrite=False):  # released: usable again
        pass


def test_the_lock_is_held_across_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom cluster.output.run_dir import claim_output_dir\n"
        f"d = claim_output_dir({str(tmp_path / 'run')!r}, resume=False, overwrite=False)\n"
        "print('held', flush=True)\ntime.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"pid {holder.pid} on "):
            claim_output_dir(tmp_path / "run", resume=False, overwrite=False)
    finally:
        holder.kill()
        holder.wait()
    with claim_output_dir(tmp_path / "run", resume=False, overwrite=False):  # a dead holder's lock is gone
        pass


def test_a_users_directory_or_file_is_never_used(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "recipe.json").write_text('{"my": "notes"}')
    (mine / "plots").mkdir()
    (mine / "plots" / "reward.png").write_bytes(b"my plot")
    before = {p: sha(p) for p in mine.rglob("*") if p.is_file()}
    for resume, overwrite in ((False, False), (False, True), (True, False)):
        with pytest.raises(RunDirError, match="not empty and was not made by aha"):
            claim_output_dir(mine, resume=resume, overwrite=overwrite)
    assert {p: sha(p) for p in mine.rglob("*") if p.is_file()} == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a directory"):
        claim_output_dir(tmp_path / "file", resume=False, overwrite=False)
    with pytest.raises(RunDirError, match="cannot write"):
        claim_output_dir(tmp_path / "file" / "run", resume=False, overwrite=False)


def test_a_run_without_a_checkpoint_can_be_started_again_and_others_files_stay(tmp_path):
    out = tmp_path / "run"
    with claim_output_dir(out, resume=False, overwrite=False):
        (out / "metrics.jsonl").write_text('{"step": 1}\n{"st')  # killed mid-line, before any checkpoint
        (out / "rollouts").mkdir()
        (out / "rollouts" / "step-000001.parquet").write_bytes(b"x")
        (out / "checkpoints" / "version-1").mkdir(parents=True)  # an interrupted first save
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="no complete checkpoint to resume from; start the run again"):
        claim_output_dir(out, resume=True, overwrite=False)
    with claim_output_dir(out, resume=False, overwrite=False):
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, RUN_MARKER, "notes.txt"]


def test_a_run_with_checkpoints_is_resumed_or_replaced_only_when_asked(tmp_path):
    out = tmp_path / "run"
    with claim_output_dir(out, resume=False, overwrite=False):
        fake_checkpoint(out / "checkpoints", 3)
        (out / "metrics.jsonl").write_text('{"step": 3}\n')
    with pytest.raises(RunDirError, match="holds a run with checkpoints .*pass --resume .* --overwrite"):
        claim_output_dir(out, resume=False, overwrite=False)
    with claim_output_dir(out, resume=True, overwrite=False):
        assert (out / "metrics.jsonl").is_file()
    with claim_output_dir(out, resume=False, overwrite=True):
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    with pytest.raises(RunDirError, match="does not exist; there is no run to resume"):
        claim_output_dir(tmp_path / "nope", resume=True, overwrite=False)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): sha(p) if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _outcome(call) -> str:
    try:
        call()
    except RunDirError as err:
        return str(err)
    return "claimable"


def _make(out: Path, state: str):
    """`out` in one of the states a driver may find it in; returns a held claim for "held"."""
    if state == "a-file":
        out.write_text("x")
    elif state == "mine":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif state != "new":
        outputs = EVAL_OUTPUTS if state == "evaluated" else RUN_OUTPUTS
        claim = claim_output_dir(out, resume=False, overwrite=False, outputs=outputs)
        if state == "held":
            return claim
        claim.release()
        name = {"no-checkpoint": "metrics.jsonl", "evaluated": "eval.json", "generated": "progress.jsonl"}.get(state)
        if name:
            (out / name).write_text("{}\n")
        if state == "with-checkpoints":
            fake_checkpoint(out / "checkpoints", 2)
    return None


def _generated(out: Path) -> str:  # aha generate's `progress`: the work an earlier run left
    return "3 prompts done" if (out / "progress.jsonl").is_file() else ""


@pytest.mark.parametrize("state, extra", [
    *[(state, {}) for state in ("new", "a-file", "mine", "no-checkpoint", "with-checkpoints", "held")],
    ("evaluated", {"outputs": EVAL_OUTPUTS}), ("generated", {"progress": _generated}),
    ("no-checkpoint", {"progress": _generated})])
@pytest.mark.parametrize("resume, overwrite", [(False, False), (False, True), (True, False)])
def test_check_claimable_refuses_what_the_claim_would_and_writes_nothing(tmp_path, state, extra, resume, overwrite):
    out = tmp_path / "out"
    held = _make(out, state)
    try:
        before = _tree(tmp_path)
        checked = _outcome(lambda: check_claimable(out, resume=resume, overwrite=overwrite, **extra))
        assert _tree(tmp_path) == before  # the check wrote nothing, not even a directory
        claimed = _outcome(lambda: claim_output_dir(out, resume=resume, overwrite=overwrite, **extra).release())
        assert checked == claimed
        if state in ("a-file", "mine", "held") or (resume and state == "new"):
            assert checked != "claimable"  # the cases every flag combination refuses
    finally:
        if held is not None:
            held.release()


def test_train_refuses_resume_and_overwrite_together(tmp_path):
    done = subprocess.run([AHA, "train", str(RECIPE), "--resume", "--overwrite"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "pass one of them" in done.stderr
    assert list(tmp_path.iterdir()) == []


# -- checkpoints --------------------------------------------------------------------------------

def test_only_complete_checkpoints_count_and_pruning_keeps_the_newest(tmp_path):
    ckpt = tmp_path / "checkpoints"
    for version in (1, 2, 3, 4):
        fake_checkpoint(ckpt, version)
    fake_checkpoint(ckpt, 5, complete=False)  # interrupted after the learner's save
    (ckpt / "latest").write_text("version-5")  # DeepSpeed's pointer: never trusted
    assert [c.version for c in complete_checkpoints(ckpt)] == [1, 2, 3, 4]
    prune_checkpoints(ckpt, keep=2)
    assert sorted(p.name for p in ckpt.glob("version-*")) == ["version-3", "version-4", "version-5"]
    drop_newer_than(ckpt, 4)
    assert sorted(p.name for p in ckpt.glob("version-*")) == ["version-3", "version-4"]
    fake_checkpoint(ckpt, 6)
    prune_checkpoints(ckpt, keep=1)  # the incomplete older than the newest complete goes too
    assert sorted(p.name for p in ckpt.glob("version-*")) == ["version-6"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong version", "missing rng"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path, damage):
    tag = fake_checkpoint(tmp_path, 7, ranks=2)
    state = tag / "driver-state.json"
    if damage == "garbage":
        state.write_bytes(b"\x00\xff not json")
    elif damage == "truncated":
        state.write_text(state.read_text()[:10])
    elif damage == "wrong version":
        state.write_text(json.dumps({"step": 7, "sampler": {}, "weight_version": 6}))
    else:
        (tag / "rng_rank1.pt").unlink()
    with pytest.raises(CheckpointError) as caught:
        read_driver_state(complete_checkpoints(tmp_path)[-1], num_ranks=2)
    message = str(caught.value)
    assert "\n" not in message and str(tag) in message


def test_a_sound_checkpoint_reads_back(tmp_path):
    tag = fake_checkpoint(tmp_path, 2, ranks=2)
    assert read_driver_state(complete_checkpoints(tmp_path)[-1], num_ranks=2)["step"] == 2
    assert tag.name == "version-2"


# -- what a resumed run may change --------------------------------------------------------------

def test_resume_allows_length_cadence_and_resources_but_not_what_is_learned():
    saved = recipe_to_dict(load_recipe(RECIPE))
    allowed = ["--run.steps", "80", "--run.checkpoint_every", "5", "--eval.every", "4", "--cluster.timeout_s", "900",
               "--rollout.num_workers", "1", "--reward.timeout_s", "9", "--run.keep_checkpoints", "9"]
    assert resume_conflicts(saved, recipe_to_dict(load_recipe(RECIPE, allowed))) == []
    changed = ["--rollout.group_size", "4", "--run.seed", "3", "--data.train_path", "other.parquet",
               "--learner.lr", "3e-4", "--reward.weights", "{arithmetic = 1.0}", "--model.pretrain.steps", "10"]
    assert resume_conflicts(saved, recipe_to_dict(load_recipe(RECIPE, changed))) == [
        "data.train_path", "learner.lr", "model.pretrain.steps", "reward.weights", "rollout.group_size", "run.seed"]


# -- data files ---------------------------------------------------------------------------------

def _synthetic_recipe(tmp_path, *extra):
    return load_recipe(None, ["--model.path", "m", "--data.train_path", str(tmp_path / "train.parquet"),
                              "--data.synthetic.task", "arithmetic", "--data.synthetic.train_rows", "20",
                              "--data.synthetic.eval_rows", "0", "--cluster.num_cpus", "8", *extra])


def test_synthetic_data_never_overwrites_a_users_file(tmp_path):
    from cluster.recipe import RecipeError

    recipe = _synthetic_recipe(tmp_path)
    (tmp_path / "train.parquet").write_bytes(b"my own dataset")
    with pytest.raises(RecipeError, match=r"^data.train_path: .* was not written by aha's \[data.synthetic\]"):
        prepare_data(recipe)
    assert (tmp_path / "train.parquet").read_bytes() == b"my own dataset"
    (tmp_path / "train.parquet").unlink()
    prepare_data(recipe)  # aha's own file: written, then reused as it is
    first = sha(tmp_path / "train.parquet")
    prepare_data(recipe)
    assert sha(tmp_path / "train.parquet") == first
    prepare_data(_synthetic_recipe(tmp_path, "--data.synthetic.seed", "5"))  # its own, other settings: rebuilt
    assert sha(tmp_path / "train.parquet") != first
    table = pq.read_table(tmp_path / "train.parquet")
    pq.write_table(table.slice(0, 5), tmp_path / "train.parquet")  # the user edited aha's file
    with pytest.raises(RecipeError, match="or was changed since"):
        prepare_data(recipe)
    assert pq.read_table(tmp_path / "train.parquet").num_rows == 5


def test_aha_data_writes_the_format_its_suffix_names_and_never_overwrites_unasked(tmp_path):
    def aha_data(*args):
        return subprocess.run([AHA, "data", "arithmetic", *map(str, args), "--rows", "4"], capture_output=True,
                              text=True, timeout=120)

    jsonl = tmp_path / "a.jsonl"
    assert aha_data(jsonl).returncode == 0
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "answer"}
    before = sha(jsonl)
    done = aha_data(jsonl)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "pass --overwrite" in done.stderr
    assert sha(jsonl) == before
    assert aha_data(jsonl, "--overwrite").returncode == 0
    done = aha_data(tmp_path / "a.csv")
    assert done.returncode == 2 and "cannot tell the format from suffix '.csv'" in done.stderr
    assert not (tmp_path / "a.csv").exists()
    assert aha_data(tmp_path / "a.parquet").returncode == 0
    assert pq.read_table(tmp_path / "a.parquet").num_rows == 4


def test_resume_refuses_a_training_file_whose_content_changed(tmp_path):
    from cluster.output.checkpoints import Checkpoint
    from cluster.run.resume_point import ResumePoint, check_same_data, train_data_sha256

    recipe = _synthetic_recipe(tmp_path)
    prepare_data(recipe)
    point = ResumePoint(Checkpoint(tmp_path / "version-1", 1),
                        {"step": 1, "sampler": {}, "weight_version": 1, "train_data_sha256": train_data_sha256(recipe)})
    check_same_data(point, recipe.data.train_path, train_data_sha256(recipe))  # the same file: fine
    table = pq.read_table(tmp_path / "train.parquet")
    pq.write_table(table.slice(1), tmp_path / "train.parquet")
    with pytest.raises(RunDirError, match=r"changed since version-1 was saved \(its content hash differs\)"):
        check_same_data(point, recipe.data.train_path, train_data_sha256(recipe))
