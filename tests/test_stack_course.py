"""`aha course verify` on the real stack, a few steps of each run: both corpora are pre-trained
and trained, every step and evaluation logs the detector's rates, and the report's table and
figure cover the seed; a second call reuses the finished runs and only redraws the report.
`aha course cot`: two runs from one pre-trained base under two templates, the evaluations of the
one that thinks under forced thinking budgets.

What the experiment shows at its full length is in docs/course.md; here the runs are far too
short to learn, so this checks the plumbing, not the result."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHORT = ["--model.pretrain.steps", "8", "--run.steps", "2", "--data.synthetic.train_rows", "64",
         "--data.synthetic.eval_rows", "8", "--eval.num_prompts", "8", "--rollout.prompts_per_step", "2",
         "--rollout.group_size", "4"]


def _course(home: Path, experiment: str = "verify"):
    command = [AHA, "course", experiment, "--root", "course", "--figures", "figures", *SHORT]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=home)


def test_course_verify_runs_both_corpora_and_reports(tmp_path):
    done = _course(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    seed = tmp_path / "course" / "verify" / "seed-0"
    for run in ("checks", "control"):
        records = [json.loads(line) for line in (seed / run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [0, 1, 2]
        for record in records[1:]:  # every RL step: the detector's rates on the training samples
            assert 0.0 <= record["verify_rate"] <= 1.0 and 0.0 <= record["correction_rate"] <= 1.0
        for step in (0, 2):  # the evaluations before and after RL: greedy and sampled
            assert {"eval/verify_rate", "eval/correction_rate", "eval/sampled/verify_rate"} <= set(records[step])
        assert (seed / run / "plots" / "self_verification.png").read_bytes().startswith(PNG_SIGNATURE)
        saved = json.loads((seed / run / "recipe.json").read_text())
        assert saved["model"]["path"] == str(Path("course/verify/seed-0") / f"{run}-base")
        assert saved["data"]["eval_path"] == "course/verify/data/pair-sum-eval.parquet"
    control = json.loads((seed / "control" / "recipe.json").read_text())["model"]["pretrain"]
    assert control["checked_fraction"] == 0 and control["exercise_fraction"] == 0  # the control's corpus

    table = (tmp_path / "course" / "verify.md").read_text()
    assert "| 0 | checks |" in table and "| 0 | control |" in table and "| all (1) | checks, after RL |" in table
    for figure in (tmp_path / "course" / "verify.png", tmp_path / "figures" / "verify.png"):
        assert figure.read_bytes().startswith(PNG_SIGNATURE)

    again = _course(tmp_path)  # finished runs are reused: nothing trains, the report is redrawn
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before, reused") == 2
    assert (tmp_path / "course" / "verify.md").read_text() == table


def test_course_cot_trains_both_runs_from_one_base_and_forces_thinking_budgets(tmp_path):
    done = _course(tmp_path, "cot")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert done.stdout.count("pre-training the base model") == 1  # one base for both runs
    assert "reusing the pre-trained base model at course/cot/seed-0/base" in done.stdout
    seed = tmp_path / "course" / "cot" / "seed-0"
    think = [json.loads(line) for line in (seed / "think" / "metrics.jsonl").read_text().splitlines()]
    for step in (0, 2):  # every thinking budget, forced, at the evaluations before and after RL
        assert {f"eval/acc@budget={b}" for b in (0, 4, 8, 12, 16, 20, 24, 32, 48)} <= set(think[step])
    at_once = json.loads((seed / "answer-at-once" / "recipe.json").read_text())
    assert at_once["data"]["template"] == "{prompt}=? <think></think><answer>"
    assert pq.read_table(seed / "answer-at-once" / "rollouts").num_rows == 2 * 2 * 4  # 2 steps x 2 prompts x G=4
    table = (tmp_path / "course" / "cot.md").read_text()
    assert "| 0 | think |" in table and "| 0 | answer-at-once |" in table
    assert (tmp_path / "figures" / "cot.png").read_bytes().startswith(PNG_SIGNATURE)


def test_course_refuses_an_unknown_experiment(tmp_path):
    done = subprocess.run([AHA, "course", "nope"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("aha: error: unknown experiment 'nope' (experiments: verify, reasoning, "
                                                    "cot, group-size, estimators, kl, all)")
    assert not any(tmp_path.iterdir())
