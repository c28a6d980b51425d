"""A full disk on the real stack: `aha train` with its output directory on a tmpfs big enough for
the run to start (recipe, model files, metrics, rollouts: about 0.2 MiB) and too small for its
first checkpoint (about 8 MiB). The run stops with one line that names the full disk under the
checkpoint folder, exit 1, no traceback, and no half-written checkpoint. The tmpfs is mounted in
a private mount namespace that ends with the run (as root). The unit cases, and read-only and
permission errors: tests/test_disk_errors.py."""

import shlex
import subprocess

import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe
from stack_helpers import AHA

pytestmark = pytest.mark.stack
DISK = "1m"


def test_a_full_disk_at_the_first_checkpoint_is_named_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recipe = write_tiny_recipe(tmp_path / "recipe.toml", {"run.steps": 1})
    # The run's exit status and what it left on the disk are printed from inside the namespace.
    command = (f"mount -t tmpfs -o size={DISK} tmpfs {shlex.quote(str(run))} && cd {shlex.quote(str(tmp_path))} && "
               f"{shlex.quote(AHA)} train {shlex.quote(str(recipe))}; echo \"exit $?\"; "
               f"ls -A {shlex.quote(str(run / 'checkpoints'))}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=600)
    if "exit " not in done.stdout:
        pytest.fail(f"this test mounts a tmpfs in a private mount namespace (unshare -m, as root); that failed: "
                    f"{done.stderr[-2000:]}")
    status, *left = done.stdout[done.stdout.rindex("exit "):].splitlines()
    assert status == "exit 1", done.stdout[-2000:] + done.stderr[-4000:]
    checkpoints = run / "checkpoints"
    said = [line for line in done.stderr.splitlines() if line.startswith("aha:")]
    assert said == [f"aha: error: the checkpoint could not be written under '{checkpoints}' (no space left "
                    f"on device under '{checkpoints}' (0 MiB free))",
                    "aha: no checkpoint was written yet; start the run again (with --overwrite)"], done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    # The half-written version-1 is gone; DeepSpeed's helper script, written beside the tags, may stay.
    assert [name for name in left if name.startswith("version-")] == [], left
