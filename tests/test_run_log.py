"""The run's output directory, written and read back through real files, pyarrow, matplotlib
and TensorBoard."""

import json
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.output.plots import heldout_before_after, heldout_summary, plot_run
from cluster.output.run_log import RunLog, read_metrics, summary_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(i, reward=1.0, **extra):
    return {
        "prompt": f"p{i}", "completion": f"c{i}", "reward": reward, "advantage": 0.5 - i,
        "weight_version": 3, "reward/math": reward, "reward/format": 0, **extra,
    }


def test_layout_is_created(tmp_path):
    with RunLog(tmp_path / "run", tensorboard=False):
        pass
    for name in ("rollouts", "checkpoints", "plots", "tb"):
        assert (tmp_path / "run" / name).is_dir()
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_metrics_round_trip_with_non_finite_as_null(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log_step(1, {"reward_mean": 0.25, "kl": float("nan"), "grad_norm": np.float32(2.0),
                         "big": float("inf"), "tokens": np.int64(7), "ok": True, "hist": np.array([1, 2])})
        log.log_step(2, {"reward_mean": 0.5})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    assert json.loads(lines[0]) == {"step": 1, "reward_mean": 0.25, "kl": None, "grad_norm": 2.0,
                                    "big": None, "tokens": 7, "ok": True, "hist": [1, 2]}
    assert read_metrics(tmp_path) == [json.loads(lines[0]), {"step": 2, "reward_mean": 0.5}]


def test_torn_last_line_is_skipped_and_removed_on_reopen(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log_step(1, {"a": 1.0})
        log.log_step(2, {"a": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "a": 3.')  # a kill in the middle of a write
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    with RunLog(tmp_path, tensorboard=False) as log:
        assert log.last_step == 2
        log.log_step(3, {"a": 3.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3


def test_damaged_middle_line_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_metrics(tmp_path)


def test_metrics_survive_sigkill(tmp_path):
    # A child logs steps then kills itself with SIGKILL: every logged line must be on disk.
    code = (
        "import os, signal\n"
        "from cluster.output.run_log import RunLog\n"
        f"log = RunLog({str(tmp_path)!r}, tensorboard=False)\n"
        "for s in range(5): log.log_step(s, {'x': s / 2})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == -9
    assert [r["x"] for r in read_metrics(tmp_path)] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_truncate_after_drops_later_steps(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log_step(step, {"reward_mean": step / 10})
            log.write_rollouts(step, [_row(0)])
        log.truncate_after(3)
        assert log.last_step == 3
        log.log_step(4, {"reward_mean": 0.99})  # the resumed run redoes step 4
    assert [(r["step"], r["reward_mean"]) for r in read_metrics(tmp_path)] == [
        (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.99)]
    assert sorted(p.name for p in (tmp_path / "rollouts").iterdir()) == [
        "step-000001.parquet", "step-000002.parquet", "step-000003.parquet"]


def test_rollouts_parquet_round_trip(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        path = log.write_rollouts(7, [_row(0), _row(1, reward=0, finish_reason="length")])
        log.write_rollouts(8, [_row(2, reward=1)])  # 0/1 rewards must not turn into int64
    assert path == tmp_path / "rollouts" / "step-000007.parquet"
    table = pq.read_table(path)
    assert table.column_names[:6] == ["prompt", "completion", "reward", "advantage", "weight_version", "step"]
    assert table.schema.field("reward").type == pa.float64()
    assert table.schema.field("reward/format").type == pa.float64()
    rows = table.to_pylist()
    assert rows[1] == {"prompt": "p1", "completion": "c1", "reward": 0.0, "advantage": -0.5,
                       "weight_version": 3, "step": 7, "reward/math": 0.0, "reward/format": 0.0,
                       "finish_reason": "length"}
    assert rows[0]["finish_reason"] is None  # a key only some rows carry is null elsewhere
    # All steps read back as one table: the types agree across files.
    both = pq.read_table(tmp_path / "rollouts")
    assert both.num_rows == 3 and sorted(both.column("step").to_pylist()) == [7, 7, 8]
    assert not [p for p in (tmp_path / "rollouts").iterdir() if p.name.startswith(".")]


def test_rollouts_reject_bad_rows(tmp_path):
    with RunLog(tmp_path, tensorboard=False) as log:
        with pytest.raises(ValueError, match="advantage"):
            log.write_rollouts(1, [{"prompt": "p", "completion": "c", "reward": 1.0, "weight_version": 0}])
        with pytest.raises(ValueError, match="'extra'"):
            log.write_rollouts(1, [_row(0, extra="text"), _row(1, extra=[1, 2])])
        empty = pq.read_table(log.write_rollouts(2, []))
    assert empty.num_rows == 0 and "reward" in empty.column_names
    assert not (tmp_path / "rollouts" / "step-000001.parquet").exists()


def _metrics_run(tmp_path, extra_at_step=None):
    with RunLog(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            metrics = {"reward_mean": step / 5, "reward/math": step / 6, "reward/format": 1.0,
                       "accuracy": step / 7, "response_length_mean": 10.0 * step,
                       "response_length_max": 20 * step, "kl": float("nan") if step == 2 else 0.01}
            if step % 2 == 0:
                metrics.update({"eval/accuracy": step / 8, "eval/pass@4": 0.9, "eval/maj@4": 0.7})
            metrics.update((extra_at_step or {}).get(step, {}))
            log.log_step(step, metrics)


def test_plots_are_valid_pngs_and_missing_metrics_are_skipped(tmp_path):
    _metrics_run(tmp_path)  # no reflection_rate logged
    written = plot_run(tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["accuracy.png", "eval_scaling.png", "response_length.png", "reward.png"]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    assert not (tmp_path / "plots" / "reflection_rate.png").exists()
    # Idempotent: a second call (say, from a Ctrl-C handler) rewrites the same files cleanly.
    assert sorted(p.name for p in plot_run(tmp_path)) == names
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names


def test_plot_reflection_rate_when_logged(tmp_path):
    _metrics_run(tmp_path, {3: {"reflection_rate": 0.25}, 4: {"reflection_rate": None}})
    names = {p.name for p in plot_run(tmp_path)}
    assert "reflection_rate.png" in names
    assert (tmp_path / "plots" / "reflection_rate.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_checks_only_when_a_detector_logged_them(tmp_path):
    _metrics_run(tmp_path, {step: {"verify_rate": step / 10, "correction_rate": step / 20,
                                   "accuracy_verified": 0.9, "accuracy_unverified": None} for step in range(1, 6)})
    names = {p.name for p in plot_run(tmp_path)}
    assert {"self_verification.png", "accuracy_by_checking.png"} <= names
    for name in ("self_verification.png", "accuracy_by_checking.png"):
        assert (tmp_path / "plots" / name).read_bytes().startswith(PNG_SIGNATURE)


def test_heldout_before_and_after_come_from_step_zero_and_the_latest_eval():
    records = [{"step": 0, "eval/accuracy": 0.09375, "eval/num_prompts": 256},
               {"step": 1, "accuracy": 0.3},
               {"step": 10, "eval/accuracy": 0.5, "eval/num_prompts": 256},
               {"step": 40, "eval/accuracy": 0.95703125, "eval/num_prompts": 256}]
    assert heldout_before_after(records) == (0.09375, 0.95703125, 256, 40)
    assert heldout_summary(records) == ("held-out accuracy (greedy, 256 problems): 9.4% before RL -> 95.7% "
                                        "after 40 steps (+86.3 points)")
    assert heldout_summary(records[1:]) is None  # no before-RL evaluation (a resumed run's own log)
    assert heldout_summary(records[:2]) is None  # nothing after it yet


def test_heldout_plot_only_with_a_before_rl_evaluation(tmp_path):
    _metrics_run(tmp_path)
    assert "heldout_accuracy.png" not in {p.name for p in plot_run(tmp_path)}
    with RunLog(tmp_path, tensorboard=False) as log:
        log.log_step(0, {"eval/accuracy": 0.1, "eval/num_prompts": 200})
    assert (tmp_path / "plots" / "heldout_accuracy.png") in plot_run(tmp_path)
    assert (tmp_path / "plots" / "heldout_accuracy.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_run_on_empty_directory(tmp_path):
    assert plot_run(tmp_path) == []


def test_tensorboard_events_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLog(tmp_path) as log:
        log.log_step(1, {"reward_mean": 0.5, "note": "text", "kl": float("nan")})
        log.log_step(2, {"reward_mean": 0.75})
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert "note" not in accumulator.Tags()["scalars"]
    values = [(e.step, e.value) for e in accumulator.Scalars("reward_mean")]
    assert values == [(1, 0.5), (2, 0.75)]


def test_summary_line():
    line = summary_line({"reward_mean": 0.5312, "accuracy": 0.4, "response_length_mean": 87.4,
                         "kl": 0.00123, "rollout_tokens_per_s": 5230.0, "grad_norm": 1.0})
    assert line == "r=0.531 acc=0.40 len=87 kl=1.23e-03 tok/s=5.2k"
    assert summary_line({"reward_mean": None, "kl": math.nan, "accuracy": 1.0}) == "acc=1.00"
    assert summary_line({}) == ""


def test_tensorboard_forgets_steps_a_resumed_run_redoes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLog(tmp_path) as log:
        for step in range(1, 6):
            log.log_step(step, {"x": float(step)})
    with RunLog(tmp_path) as log:  # resume from a checkpoint at step 3
        assert log.last_step == 5
        log.truncate_after(3)
        log.log_step(4, {"x": 40.0})
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars("x")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
