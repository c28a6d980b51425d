"""A write the file system refuses is named in one line (cluster/wire/disk_errors.py): real
errors from real file systems — /dev/full, a full tmpfs, a read-only tmpfs (both mounted in a
private mount namespace, as root), a folder a plain user may not write in — through Python,
torch, safetensors, the run's writers and the model directory that `final/` and `aha export`
write. The checkpoint of a real run on a full disk: tests/test_stack_disk.py."""

import errno
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from cluster.wire.disk_errors import DiskError, DiskWriteFailed, naming_disk_errors, write_failure
from cluster.wire.errors import RunInterrupted

NOBODY = 65534

# Each script gets the folder under test as argv[1] and prints one JSON object: case -> what it saw.
WRITES = """
import json, os, sys, torch
from pathlib import Path
from safetensors.torch import save_file
from cluster.output.run_log import RunLog, atomic_write
from cluster.wire.disk_errors import write_failure

root, seen = Path(sys.argv[1]), {}

def attempt(case, write, judge=lambda err: write_failure(err, root)):
    try:
        write()
        seen[case] = "written"
    except Exception as err:
        seen[case] = judge(err)
"""
FILL = """
log = RunLog(root / "run", tensorboard=False)  # made while there is room
tb_log = RunLog(root / "tb_run")
tb_log.log_step(0, {"a": 1.0})  # TensorBoard's writer and its thread start while there is room
fd = os.open(root / "filler", os.O_WRONLY | os.O_CREAT)
for chunk in (1 << 16, 1 << 12, 1):
    try:
        while True:
            os.write(fd, bytes(chunk))
    except OSError:
        pass
"""
BASIC = """
attempt("python", lambda: Path(root / "a.txt").write_text("x" * 100000))
attempt("torch", lambda: torch.save(torch.ones(100000), root / "t.pt"))
attempt("safetensors", lambda: save_file({"w": torch.ones(100000)}, root / "w.safetensors"))
attempt("atomic_write", lambda: atomic_write(root / "state.json", lambda tmp: Path(tmp).write_text("x" * 100000)),
        judge=lambda err: f"{type(err).__name__}: {err}")
"""
RUN_LOG = """
row = {"prompt": "p" * 50000, "completion": "c" * 50000, "reward": 1.0, "advantage": 0.0, "weight_version": 0}
attempt("rollouts", lambda: log.write_rollouts(1, [row]), judge=lambda err: f"{type(err).__name__}: {err}")
attempt("metrics", lambda: log.log_step(1, {"note": "m" * 100000}), judge=lambda err: f"{type(err).__name__}: {err}")
import contextlib, io
with contextlib.redirect_stderr(io.StringIO()) as said:
    attempt("close", log.close, judge=lambda err: f"{type(err).__name__}: {err}")
seen["close said"] = said.getvalue()
def steps():  # metrics.jsonl or TensorBoard's thread meets the full disk first: either is named
    for step in range(1, 100000):
        tb_log.log_step(step, {"a": 1.0})
with contextlib.redirect_stderr(io.StringIO()) as said:
    attempt("tensorboard", steps, judge=lambda err: f"{type(err).__name__}: {err}")
    tb_log.close()
seen["tensorboard said"] = said.getvalue()
seen["left"] = sorted(p.name for p in (root / "run" / "rollouts").iterdir())
"""
DONE = "print(json.dumps(seen))"


def _in_tmpfs(tmp_path: Path, options: str, script: str, *args: str) -> dict:
    """Run `script` with a tmpfs (mount `options`) at tmp_path/mnt, in a private mount namespace
    that ends with it, so nothing stays mounted here."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    arguments = " ".join(shlex.quote(arg) for arg in (str(mnt), *args))
    command = (f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(mnt))} && "
               f"exec {shlex.quote(sys.executable)} -c {shlex.quote(script)} {arguments}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"these tests mount a tmpfs in a private mount namespace (unshare -m, as root); that failed "
                    f"(exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def test_dev_full_gives_a_real_enospc_named_with_the_free_space():
    with pytest.raises(OSError) as full:
        with open("/dev/full", "w") as handle:
            handle.write("x")
            handle.flush()
    assert full.value.errno == errno.ENOSPC
    free = _free_mib("/dev")
    assert write_failure(full.value, "/dev/full") == f"no space left on device under '/dev' ({free} MiB free)"
    # torch's zip writer loses the errno; /dev has room, so it is named as a short write, not a full disk.
    with pytest.raises(RuntimeError, match="unexpected pos") as short:
        torch.save(torch.ones(1000), "/dev/full")
    assert write_failure(short.value, "/dev/full") == (
        f"the file system under '/dev' took only part of the file ({free} MiB free; a disk quota or a "
        "failing device?)")


def test_the_cause_is_found_through_a_library_that_wraps_it():
    try:
        try:
            with open("/dev/full", "w") as handle:
                handle.write("x")
                handle.flush()
        except OSError as err:
            raise RuntimeError("the library's own words") from err
    except RuntimeError as wrapped:
        assert write_failure(wrapped, "/dev").startswith("no space left on device under '/dev' (")


def test_a_full_disk_is_named_for_python_torch_safetensors_and_the_run_writers(tmp_path):
    seen = _in_tmpfs(tmp_path, "size=512k", WRITES + FILL + BASIC + RUN_LOG + DONE)
    mnt = tmp_path / "mnt"
    named = f"no space left on device under '{mnt}' (0 MiB free)"
    assert seen["python"] == seen["torch"] == seen["safetensors"] == named
    assert seen["atomic_write"] == f"DiskWriteFailed: '{mnt / 'state.json'}' could not be written: {named}"
    rollouts = mnt / "run" / "rollouts"
    assert seen["rollouts"] == (f"DiskWriteFailed: '{rollouts / 'step-000001.parquet'}' could not be written: "
                                f"no space left on device under '{rollouts}' (0 MiB free)")
    assert seen["metrics"] == (f"DiskWriteFailed: '{mnt / 'run' / 'metrics.jsonl'}' could not be written: "
                               f"no space left on device under '{mnt / 'run'}' (0 MiB free)")
    # The failed line was reported once: closing neither raises nor warns about it again.
    assert seen["close"] == "written" and seen["close said"] == ""
    assert seen["left"] == []  # no temporary left behind
    tensorboard = seen["tensorboard"]
    assert tensorboard.startswith("DiskWriteFailed: ") and "could not be written: no space left" in tensorboard
    assert "Traceback" not in seen["tensorboard said"]  # TensorBoard's thread does not print its own


def test_a_read_only_file_system_is_named(tmp_path):
    script = WRITES + BASIC + """
attempt("run_log", lambda: RunLog(root / "run"), judge=lambda err: f"{type(err).__name__}: {err}")
""" + DONE
    seen = _in_tmpfs(tmp_path, "ro,size=64k", script)
    mnt = tmp_path / "mnt"
    named = f"read-only file system under '{mnt}'"
    assert seen["python"] == seen["torch"] == seen["safetensors"] == named
    assert seen["atomic_write"] == f"DiskWriteFailed: '{mnt / 'state.json'}' could not be written: {named}"
    assert seen["run_log"] == f"DiskWriteFailed: '{mnt / 'run'}' could not be written: {named}"


def test_a_folder_a_user_may_not_write_in_is_named():
    # Root writes anywhere: a plain user meets the permission (tmp_path's parents are root's alone).
    base = Path(tempfile.mkdtemp(prefix="aha-perm-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        done = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                               sys.executable, "-c", WRITES + BASIC + DONE, str(locked)],
                              capture_output=True, text=True, timeout=300, cwd="/")
        assert done.returncode == 0, done.stderr[-2000:]
        seen = json.loads(done.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(base)
    named = f"permission denied: '{locked}'"
    assert seen["python"] == seen["torch"] == seen["safetensors"] == named
    assert seen["atomic_write"] == f"DiskWriteFailed: '{locked / 'state.json'}' could not be written: {named}"


def test_other_errors_pass_unchanged(tmp_path):
    with pytest.raises(IsADirectoryError):  # not the disk's fault: the caller's own error stays
        with naming_disk_errors(tmp_path):
            open(tmp_path, "w")
    with pytest.raises(ValueError, match="a bad row"):
        with naming_disk_errors(tmp_path):
            raise ValueError("a bad row")
    failed = RunInterrupted("already one line")
    with pytest.raises(RunInterrupted) as kept:
        with naming_disk_errors(tmp_path):
            raise failed
    assert kept.value is failed


def test_the_errors_are_one_line_for_the_cli_and_cross_a_process_boundary():
    # DiskWriteFailed: the CLI's one line and exit 1, with the resume line of an interrupted run.
    assert issubclass(DiskWriteFailed, RunInterrupted)
    # DiskError: a learner rank's, not a RunFailed, so the driver wraps it naming the checkpoint;
    # Ray pickles it across.
    error = pickle.loads(pickle.dumps(DiskError("no space left on device under '/x' (0 MiB free)")))
    assert not isinstance(error, RunInterrupted) and isinstance(error, OSError)
    assert error.args == ("no space left on device under '/x' (0 MiB free)",)


def test_a_model_directory_on_a_full_disk_is_named_and_leaves_nothing(tiny_model_dir, tmp_path):
    # What final/ and `aha export` write (learner/hf_export.py), the tiny model's weights and files.
    script = WRITES + FILL + """
from transformers import AutoConfig, AutoModelForCausalLM
from learner.hf_export import write_hf_model
source = sys.argv[2]
weights = AutoModelForCausalLM.from_pretrained(source).state_dict()
attempt("model", lambda: write_hf_model(weights, AutoConfig.from_pretrained(source), root / "final",
                                        tokenizer_source=source, generation_source=source, record={}),
        judge=lambda err: f"{type(err).__name__}: {err}")
seen["left"] = sorted(p.name for p in root.iterdir())
""" + DONE
    seen = _in_tmpfs(tmp_path, "size=512k", script, str(tiny_model_dir))
    mnt = tmp_path / "mnt"
    assert seen["model"] == (f"DiskWriteFailed: the model directory '{mnt / 'final'}' could not be written: no space "
                             f"left on device under '{mnt}' (0 MiB free)")
    assert seen["left"] == ["filler", "run", "tb_run"]  # no half-written model, no staging folder


def _free_mib(path: str) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize // 2**20
