"""The run's output directory: metrics, rollouts and TensorBoard events (plots: cluster/output/plots.py).

Layout (docs/commands.md, aha train):

    output_dir/
      metrics.jsonl      one JSON object per step, with "step"; NaN/inf written as null
      rollouts/          step-000042.parquet: one row per completion of that step
      heldout/           step-000040.parquet: one row per held-out completion of the evaluation
                         after that step (cluster/output/eval_report.py writes it)
      checkpoints/       written by the learner; created here so the layout is always whole
      plots/             reward.png, accuracy.png, response_length.png, reflection_rate.png, ...
      tb/                TensorBoard events

Every file is either appended one fsync'ed line at a time (metrics.jsonl) or written to a
hidden temporary file and renamed into place (everything else), so a run killed with SIGKILL
leaves at most a torn last metrics line, which readers skip and the next RunLog removes. A
write the file system refuses (a full disk, a lost permission) is a one-line DiskWriteFailed
naming the cause (cluster/wire/disk_errors.py).

Imports only stdlib and pyarrow at module level: the driver imports this early, before any
heavy library; matplotlib and torch's TensorBoard writer are imported where they are used.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.wire.disk_errors import DiskWriteFailed, naming_disk_errors

METRICS_FILE = "metrics.jsonl"
HELDOUT_DIR = "heldout"  # the held-out completions of each evaluation during the run
SUBDIRS = ("rollouts", "checkpoints", "plots", "tb")
# Rollout columns every row must carry, with the Arrow type they always get, so the files of
# all steps read back as one table (`pq.read_table(output_dir / "rollouts")`).
ROLLOUT_COLUMNS = {
    "prompt": pa.string(),
    "completion": pa.string(),
    "reward": pa.float64(),
    "advantage": pa.float64(),
    "weight_version": pa.int64(),
    "step": pa.int64(),
}
REWARD_COMPONENT_PREFIX = "reward/"  # rollout columns and metrics "reward/<name>"
REWARD_FAILURE_PREFIX = "reward_failure/"  # rollout columns: why the component failed, "" if it did not


class RunLog:
    """Writer for one run's output directory. Use as a context manager or call close()."""

    def __init__(self, output_dir: str | os.PathLike, *, tensorboard: bool = True):
        self.output_dir = Path(output_dir)
        with naming_disk_errors(self.output_dir):
            for sub in SUBDIRS:
                (self.output_dir / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("rollouts", "plots"):
            _remove_temporaries(self.output_dir / sub)
        self.metrics_path = self.output_dir / METRICS_FILE
        _drop_torn_tail(self.metrics_path)
        records = read_metrics(self.output_dir)
        # The last step already on disk: where a resumed run picks up (None for a fresh run).
        self.last_step: int | None = max((r["step"] for r in records), default=None)
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        self._tensorboard = tensorboard
        self._writer = None
        self._purge_step: int | None = None

    # -- metrics -------------------------------------------------------------------------

    def log_step(self, step: int, metrics: Mapping[str, object]) -> None:
        """Append one line {"step": step, **metrics} to metrics.jsonl and to TensorBoard.

        The line is flushed and fsync'ed before returning. Values become plain JSON:
        numpy/torch scalars via .item(), arrays via .tolist(), NaN and infinities as null.
        """
        record = {"step": int(step)}
        record.update((str(k), _jsonable(v)) for k, v in metrics.items() if k != "step")
        line = json.dumps(record, allow_nan=False, default=str)
        with naming_disk_errors(self.metrics_path):
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        self.last_step = int(step)
        if self._tensorboard:
            with naming_disk_errors(self.output_dir / "tb", "TensorBoard's events"):
                self._write_scalars(int(step), record)

    def _write_scalars(self, step: int, record: Mapping[str, object]) -> None:
        writer = self._summary_writer()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                writer.add_scalar(key, float(value), step)

    def _summary_writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # heavy: only once logging starts

            _quiet_tensorboard_thread()
            # purge_step makes TensorBoard discard the events of steps a resumed run redoes.
            self._writer = SummaryWriter(
                log_dir=str(self.output_dir / "tb"), purge_step=self._purge_step, flush_secs=10
            )
        return self._writer

    # -- rollouts ------------------------------------------------------------------------

    def write_rollouts(self, step: int, rows: Sequence[Mapping[str, object]]) -> Path:
        """Write one step's completions to rollouts/step-{step:06d}.parquet, atomically.

        Each row needs prompt, completion, reward, advantage and weight_version; "step" is
        filled in. Reward components go in as "reward/<name>" keys (float64), why one failed as
        "reward_failure/<name>" (string); any other key becomes a column of its own, missing
        values null. A column whose values have
        incompatible types is a ValueError naming it.
        """
        path = self.output_dir / "rollouts" / f"step-{int(step):06d}.parquet"
        table = rollout_table(step, rows)
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        return path

    # -- resume ----------------------------------------------------------------------------

    def truncate_after(self, step: int) -> None:
        """Forget everything logged after `step` (resume from a checkpoint taken at `step`).

        metrics.jsonl keeps only records with step <= `step` (rewritten atomically; a torn
        line goes too), rollout and held-out files of later steps are deleted, and TensorBoard is told to
        purge the later steps when the next scalar is written.
        """
        kept = [r for r in read_metrics(self.output_dir) if r["step"] <= step]
        self._file.close()
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        atomic_write(self.metrics_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        self._file = open(self.metrics_path, "a", encoding="utf-8")
        self.last_step = max((r["step"] for r in kept), default=None)
        for path in [*(self.output_dir / "rollouts").glob("step-*.parquet"),
                     *(self.output_dir / HELDOUT_DIR).glob("step-*.parquet")]:
            if _rollout_step(path) is not None and _rollout_step(path) > step:
                path.unlink()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._purge_step = step + 1

    def close(self) -> None:
        """Close metrics.jsonl and flush TensorBoard. Safe to call twice. It runs as a run ends,
        an error maybe on its way out: a file the disk refuses now is a warning, not a new error."""
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:  # only a line whose failed write already raised DiskWriteFailed is left
                pass
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                with naming_disk_errors(self.output_dir / "tb", "TensorBoard's events"):
                    writer.close()
            except DiskWriteFailed as err:
                print(f"aha: warning: {err}", file=sys.stderr, flush=True)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rollout_table(step: int, rows: Sequence[Mapping[str, object]]) -> pa.Table:
    """The Arrow table `write_rollouts` writes: fixed types for the known columns, inferred
    (over all rows) for the rest. No rows gives an empty table with the required columns."""
    for i, row in enumerate(rows):
        missing = [c for c in ROLLOUT_COLUMNS if c != "step" and c not in row]
        if missing:
            raise ValueError(f"rollout row {i} lacks {', '.join(missing)}")
    names = list(ROLLOUT_COLUMNS)
    for row in rows:  # union of keys in first-seen order: rows may differ in extras
        names.extend(k for k in row if k not in names)
    columns = {}
    for name in names:
        values = [int(step) if name == "step" else row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values, type=_column_type(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as err:
            raise ValueError(f"rollout column {name!r} has values of incompatible types: {err}") from err
    return pa.table(columns)


def _column_type(name: str) -> pa.DataType | None:
    if name in ROLLOUT_COLUMNS:
        return ROLLOUT_COLUMNS[name]
    if name.startswith(REWARD_COMPONENT_PREFIX):
        return pa.float64()  # a component that is 0/1 in one step must not be int64 there
    if name.startswith(REWARD_FAILURE_PREFIX):
        return pa.string()  # a step with no reasons to give must not be typed null there
    return None


def _rollout_step(path: Path) -> int | None:
    try:
        return int(path.stem.removeprefix("step-"))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------
# Reading metrics back.


def read_metrics(output_dir: str | os.PathLike) -> list[dict]:
    """The records of output_dir/metrics.jsonl, in file order ([] when there is none).

    A torn last line (a run killed mid-write) is skipped; a bad line anywhere else means
    the file was damaged some other way and is a ValueError naming the line.
    """
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # the last line with no newline after it: torn
                continue
            raise ValueError(f"{path}:{number}: not a JSON object ({err})") from err
    return records


def summary_line(metrics: Mapping[str, object]) -> str:
    """A short progress-bar postfix: 'r=0.53 acc=0.41 len=87 kl=1.2e-03 tok/s=5.2k'.

    Reads reward_mean, accuracy, response_length_mean, kl and rollout_tokens_per_s; a
    missing or null figure is left out.
    """
    parts = []
    for label, key, fmt in _SUMMARY_FIELDS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            parts.append(f"{label}={fmt(value)}")
    return " ".join(parts)


def _compact(value: float) -> str:
    """Throughputs: 950, 5.2k, 1.3M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


_SUMMARY_FIELDS = (
    ("r", "reward_mean", lambda v: f"{v:.3f}"),
    ("acc", "accuracy", lambda v: f"{v:.2f}"),
    ("len", "response_length_mean", lambda v: f"{v:.0f}"),
    ("kl", "kl", lambda v: f"{v:.2e}"),
    ("tok/s", "rollout_tokens_per_s", _compact),
)


# ---------------------------------------------------------------------------------------
# File helpers.


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) on a hidden temporary beside `path`, fsync it, rename it over.

    The temporary starts with "." so pyarrow's dataset reader ignores a leftover one.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming_disk_errors(path):  # DiskWriteFailed for a full disk or a lost permission
            write(str(tmp))
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even that: the named error above stays the one raised
            pass


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes events in a thread that keeps its error (a full disk) for the next
    `add_scalar` to raise, named, and also lets Python print it with a traceback: that
    thread's print is dropped, every other thread's goes to the hook before."""
    previous = threading.excepthook
    if getattr(previous, "aha_quiet", False):
        return

    def hook(args) -> None:
        if type(args.thread).__name__ != "_AsyncWriterThread":
            previous(args)

    hook.aha_quiet = True
    threading.excepthook = hook


def _remove_temporaries(directory: Path) -> None:
    """Delete temporaries that a killed process left behind."""
    for leftover in directory.glob(".*.tmp-*"):
        leftover.unlink(missing_ok=True)


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line off metrics.jsonl so the next append starts on a line of its own.

    A complete record that only lacks its newline (killed between the two) is kept.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
        keep = data + b"\n"
    except ValueError:
        keep = data[:cut]
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(keep))


def _jsonable(value: object) -> object:
    """A metric value as plain JSON: scalars unwrapped, non-finite floats as None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays and scalars, torch tensors
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
