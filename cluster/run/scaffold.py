"""The run scaffold that `aha train`, `aha distill` and `aha sft` share around their steps.

A command claims its output directory, prepares its inputs, then hands the rest of a run's
life to `TrainingRun`: resume point and data check, the roles started (cluster/roles/system.py),
placement.json, the shared-storage check, the checkpoint resumed or the recipe and base model
files recorded, progress and the stop request around the steps, checkpoints on cadence,
`final/`, plots and clean-up. What differs between the commands is only their step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cluster.output.base_model_files import save_model_files
from cluster.output.checkpoints import complete_checkpoints, read_driver_state
from cluster.output.plots import plot_run, print_run_end
from cluster.output.run_dir import FINAL_DIR, MODEL_FILES_DIR, PLACEMENT_FILE, RECIPE_FILE, claim_output_dir
from cluster.output.run_log import RunLog
from cluster.recipe import Recipe, recipe_to_dict
from cluster.roles.learner_group import LearnerLost
from cluster.roles.recovery import one_line
from cluster.roles.system import start_system
from cluster.run.resume_point import check_same_data, find_resume_point, naming_last_checkpoint, save_checkpoint
from cluster.run.stop import RunStopped, StopRequest
from cluster.startup.live_placement import write_placement
from cluster.wire.disk_errors import naming_disk_errors
from cluster.wire.errors import RunFailed, RunInterrupted


@contextmanager
def claimed_run(recipe: Recipe, *, resume: bool, overwrite: bool):
    """The run's output directory, claimed and locked for the block; a run stopped by a dead
    rank or a failed save names the checkpoint it resumes from."""
    with claim_output_dir(recipe.output_dir, resume=resume, overwrite=overwrite) as run_dir:
        with naming_last_checkpoint(run_dir.checkpoints):
            yield run_dir


class TrainingRun:
    """One training run in its claimed directory `run_dir`, from its roles' start to its end.

    Use as a context manager: `start` the roles, iterate `steps`, `record` each step's
    metrics and `end_step` it (checkpoint on cadence, stop on request), then `finish`
    (`final/`); leaving the block closes the progress bar, plots, and shuts the roles down.
    Each step runs inside `surviving_learner_loss`: a learner rank that dies restarts the
    learner group from the last complete checkpoint and the steps after it are done again.
    """

    def __init__(self, recipe: Recipe, run_dir, *, stage: str, resume: bool):
        self.recipe, self.run_dir, self.out, self.stage = recipe, run_dir, run_dir.path, stage
        self.resume_at = find_resume_point(run_dir, recipe) if resume else None
        self.data_sha256 = ""
        self.log = RunLog(self.out)
        self.system, self.first_step, self.version = None, 1, 0
        self._next_step = 1
        self._sampler_start: dict = {}  # where the data order starts: a restart without a checkpoint goes back there
        self._bar = self._stop = None
        self._finished = False

    def __enter__(self) -> "TrainingRun":
        return self

    def check_data(self, data_path: str, data_sha256: str) -> None:
        """The training file (prompts or traces) and its hash, recorded with each checkpoint: a
        resumed run continues its data order only over the very same file."""
        self.data_sha256 = data_sha256
        if self.resume_at is not None:
            check_same_data(self.resume_at, data_path, data_sha256)

    def start(self, model_path: str, tokenizer, job: str, sampler, *, total_steps: int | None = None,
              system=None) -> None:
        """Start the roles (or take `system`, started already); resume the learner, `sampler` and
        the engines' weights from the checkpoint, or record the recipe and the base model's files
        for a new run."""
        if system is None:
            system = start_system(self.recipe, model_path, tokenizer, job, total_steps=total_steps)
        system.tokenizer = tokenizer
        self.system = system
        write_placement(self.out / PLACEMENT_FILE, system.plan, system.placement_groups())
        system.learners.check_shared_storage(self.out)  # the ranks write checkpoints there, maybe from other nodes
        if self.resume_at is not None:
            self.version = system.learners.load_checkpoint(str(self.run_dir.checkpoints), self.resume_at.checkpoint.tag)
            sampler.load_state_dict(self.resume_at.state["sampler"])
            self.first_step = self.resume_at.step + 1
            self.log.truncate_after(self.resume_at.step)
            if system.weights is not None:
                system.weights.push(self.version)
            self._sampler_start = self.resume_at.state["sampler"]
        else:
            self._sampler_start = sampler.state_dict()
            with naming_disk_errors(self.out / RECIPE_FILE):  # a full disk at the very start: one named line
                (self.out / RECIPE_FILE).write_text(json.dumps(recipe_to_dict(self.recipe), indent=2))
            save_model_files(self.out / MODEL_FILES_DIR, model_path, tokenizer,
                             trust_remote_code=self.recipe.model.trust_remote_code)

    @property
    def resumed(self) -> bool:
        return self.resume_at is not None

    def steps(self, last: int, desc: str) -> Iterator[int]:
        """The steps from the first (1, or the one after the checkpoint) to `last`, with a
        progress bar; the first SIGTERM / Ctrl-C lets the step finish, then `end_step` stops."""
        from tqdm import tqdm

        self._bar = tqdm(total=last, initial=self.first_step - 1, desc=desc, unit="step", dynamic_ncols=True)
        self._stop = StopRequest().install()
        self._next_step = self.first_step
        while self._next_step <= last:  # a learner restart sets it back to the step after its checkpoint
            step, self._next_step = self._next_step, self._next_step + 1
            yield step

    @contextmanager
    def surviving_learner_loss(self, rewind: Callable[[dict], None]):
        """Around one step: if a learner rank dies in it (LearnerLost), restart the learner
        group from the last complete checkpoint (none yet: the base model), push those weights
        to the engines, `rewind(sampler state)` the data order to it, forget what was logged
        after it, and make `steps` go on from the step after it: those steps are trained again,
        each once in the record. Past cluster.max_restarts, the run stops (and can resume)."""
        try:
            yield
        except LearnerLost as lost:
            self._restart_learners(lost, rewind)

    def _restart_learners(self, lost: LearnerLost, rewind: Callable[[dict], None]) -> None:
        system, checkpoints = self.system, self.run_dir.checkpoints
        system.recovery.allow_restart("learner", f"{lost}; the learner group restarts from its last checkpoint")
        started = time.perf_counter()
        try:
            system.restart_learners()
        except RunFailed:
            raise
        except Exception as err:  # e.g. no room left for the ranks once a node is lost
            raise RunInterrupted(f"{lost}, and the learner group could not be restarted: {one_line(err)}") from None
        write_placement(self.out / PLACEMENT_FILE, system.plan, system.placement_groups())  # where the new ranks are
        complete = complete_checkpoints(checkpoints)
        if complete:
            state = read_driver_state(complete[-1], self.recipe.learner.num_ranks)
            version = system.learners.load_checkpoint(str(checkpoints), complete[-1].tag)
            step, sampler_state, origin = state["step"], state["sampler"], f"{complete[-1].tag} (step {state['step']})"
        else:
            version, step, sampler_state, origin = 0, 0, self._sampler_start, "the base model (no checkpoint yet)"
        self.log.truncate_after(step)
        rewind(sampler_state)
        if system.weights is not None:
            system.weights.push(version)
        self._next_step = step + 1
        self._bar.n = step
        self._bar.refresh()
        system.recovery.recovered(started, f"learner group restarted from {origin}")

    def say(self, line: str) -> None:
        """A line for the user, above the progress bar once there is one."""
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def record(self, step: int, metrics: dict, summary: str) -> None:
        """Log step `step`'s metrics and show `summary` beside the progress bar."""
        self.log.log_step(step, metrics)
        self._bar.set_postfix_str(summary)
        self._bar.update(1)

    def end_step(self, step: int, last: int, *, version: int, sampler_state: dict) -> None:
        """Checkpoint after the last step, every run.checkpoint_every steps, and when a stop was
        asked for (then RunStopped: the CLI prints how to resume)."""
        run = self.recipe.run
        stopping = self._stop.requested and step < last
        if step == last or stopping or (run.checkpoint_every and step % run.checkpoint_every == 0):
            save_checkpoint(self.system.learners, self.run_dir.checkpoints,
                            {"step": step, "sampler": sampler_state, "weight_version": version,
                             "train_data_sha256": self.data_sha256}, run.keep_checkpoints)
        if stopping:
            raise RunStopped(f"stopped after step {step} of {last} ({self._stop.signal}), checkpoint written")

    def finish(self) -> Path:
        """The run's model as a Hugging Face directory, `final/`: the next stage's model.path."""
        self.system.learners.export_hf(str(self.out / FINAL_DIR), str(self.out / MODEL_FILES_DIR))
        self._finished = True
        return self.out

    def __exit__(self, *exc) -> None:

        if self._stop is not None:
            self._stop.restore()
            self._bar.close()
        plot_run(self.out)
        self.log.close()
        if self.system is not None:
            self.system.shutdown()
        if self._finished:
            print_run_end(self.out, stage=self.stage)
