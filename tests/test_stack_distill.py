"""`aha distill` end to end on CPU: vLLM rollout workers sample the student, a teacher actor scores
every sampled token, DeepSpeed learns from the reverse KL. Two real runs, as each pays about a
minute of start-up on 2 cores: a student equal to its teacher learns nothing, and its teacher,
killed mid-run, is replaced with nothing lost; a different student moves towards its teacher. And the
refusals, which start nothing."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cluster.inputs.tiny_recipe import write_tiny_recipe
from cluster.output.run_log import read_metrics

pytestmark = pytest.mark.stack
AHA = str(Path(sys.executable).with_name("aha"))

# The tiny recipe distilling a student (a model directory, or a tiny model built where a test
# says so) from a teacher: short sums with no held-out set, one learner rank beside the teacher.
DISTILL = {
    "model.tiny": None,
    "data.eval_path": "", "data.template": "{prompt}=? <think>", "data.max_prompt_tokens": 32,
    "data.synthetic.eval_rows": 0,
    "rollout.max_new_tokens": 16, "rollout.max_model_len": 128, "rollout.kv_cache_gb": 0.05,
    "reward.weights": {"arithmetic": 1.0},
    "algorithm": None,
    "learner.num_ranks": None, "learner.micro_batch_size": 16,
    "cluster.teacher_cpus": 0.5,
    "eval": None,
}
# A student built on the fly (the refusals come before it is built).
TINY_STUDENT = {"hidden_size": 128, "num_layers": 1, "seed": 0}


def _write_recipe(out: Path, *, student, teacher, tiny=None, loss="advantage", lr=3e-3, steps=4, checkpoint_every=0,
                  timeout=300) -> Path:
    return write_tiny_recipe(out / "recipe.toml", {
        **DISTILL, "model.path": str(student), "model.tiny": tiny, "distill": {"teacher": str(teacher), "loss": loss},
        "learner.lr": lr, "cluster.timeout_s": timeout, "run.steps": steps, "run.checkpoint_every": checkpoint_every})


def _tiny(directory: Path, *, embedding_scale: float = 1.0, **fields) -> Path:
    from safetensors.torch import load_file, save_file

    from cluster.inputs.tiny_model import build_tiny_model
    from spec_helpers import tiny_spec

    out = build_tiny_model(directory, tiny_spec(**fields))
    if embedding_scale != 1.0:  # the embeddings are tied: every logit grows by the factor
        weights = load_file(out / "model.safetensors")
        weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"] * embedding_scale
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A random tiny model: its next-token distributions are close to uniform."""
    return _tiny(tmp_path_factory.mktemp("models") / "teacher", seed=5, num_layers=2)


@pytest.fixture(scope="module")
def peaked_student_dir(tmp_path_factory):
    """Another seed, one layer fewer, and peaked: its embeddings times 3 make its logits about 3
    times larger, so its reverse KL to the near-uniform teacher starts near 3 nats. (A peaked
    teacher and a flat student is the harder way round: the student rarely samples the few tokens
    the teacher likes, and in a trial the KL did not move in 8 steps; a peaked student
    samples exactly the tokens the teacher dislikes, and reverse KL, mode-seeking, pushes them
    down at once.)"""
    return _tiny(tmp_path_factory.mktemp("models") / "student", seed=0, num_layers=1, embedding_scale=3.0)


def _sampled_tokens(run: Path, step: int) -> int:
    import pyarrow.parquet as pq

    table = pq.read_table(run / "rollouts" / f"step-{step:06d}.parquet", columns=["num_tokens"])
    return sum(table["num_tokens"].to_pylist())


def test_a_student_equal_to_its_teacher_learns_nothing_and_a_dead_teacher_is_replaced(tmp_path, teacher_dir):
    # The student is the teacher's own directory. lr is tiny because Adam's step is about lr
    # per weight however small the gradient: at 3e-3 float noise alone would move the student
    # off its teacher after step 1, and at 1e-7 it had moved enough by step 4 for a gradient
    # norm of 1.5e-4; at 1e-10 a step is below float32's resolution of nearly all weights, so the
    # student stays its teacher and each step's gradient says whether the two really agree.
    recipe = _write_recipe(tmp_path, student=teacher_dir, teacher=teacher_dir, loss="kl", lr=1e-10, steps=4,
                           timeout=240)
    run = tmp_path / "run"
    # The teacher's process is killed as step 2 starts (cluster/run/chaos.py): it is replaced and
    # the groups it had are graded again.
    done = subprocess.run([AHA, "distill", str(recipe)], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env={**os.environ, "AHA_CHAOS": "teacher@generate:2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]
    assert "[aha] chaos: killing teacher" in done.stdout
    assert "[aha] teacher 0 died (" in done.stdout and "[aha] teacher 0 replaced in" in done.stdout, done.stdout[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]

    metrics = read_metrics(run)
    print("identical student: distill/reverse_kl, learner/reverse_kl, learner/grad_norm by step:",
          [(m["step"], m["distill/reverse_kl"], m.get("learner/reverse_kl"), m["learner/grad_norm"]) for m in metrics])
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert [m["restarts/teacher"] for m in metrics] == [0, 1, 1, 1]
    assert metrics[1]["time/recovery"] > 0
    for m in metrics:
        # The engine's (vLLM) and the teacher's (transformers) logprobs of one fp32 model differ
        # by float noise only: measured about 1e-8 per token on average (one sign or the other).
        assert abs(m["distill/reverse_kl"]) < 1e-5, m
        # loss "kl": the gradient is (learner's logp - teacher's logp) * w * grad logp. Learner and
        # teacher are both transformers fp32 forwards on CPU: measured exactly 0 (their logprobs
        # agree to the bit); a different student's is above 0.1 (the test below).
        assert m["learner/grad_norm"] < 1e-5, m
        assert abs(m["learner/reverse_kl"]) < 1e-5, m
    # Nothing lost or doubled: every step graded as many tokens as it sampled, one group per prompt.
    for m in metrics:
        assert m["distill/teacher_tokens"] == _sampled_tokens(run, m["step"]) > 0
    assert (run / "final" / "config.json").is_file()


def test_a_different_student_moves_towards_its_teacher(tmp_path, teacher_dir, peaked_student_dir):
    recipe = _write_recipe(tmp_path, student=peaked_student_dir, teacher=teacher_dir, loss="advantage", lr=3e-3,
                           steps=6)
    done = subprocess.run([AHA, "distill", str(recipe)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    run = tmp_path / "run"
    metrics = read_metrics(run)
    kl = [m["distill/reverse_kl"] for m in metrics]
    print("different student: distill/reverse_kl by step:", kl, "grad_norm:", [m["learner/grad_norm"] for m in metrics])
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for m in metrics:
        for key in ("distill/reverse_kl", "distill/teacher_agreement", "distill/teacher_tokens", "time/teacher",
                    "learner/grad_norm"):
            assert key in m, key
        assert 0.0 <= m["distill/teacher_agreement"] <= 1.0
        # the teacher scored every token the student sampled in the step
        assert m["distill/teacher_tokens"] == _sampled_tokens(run, m["step"]) > 0
        assert m["time/teacher"] > 0
    first, last = sum(kl[:2]) / 2, sum(kl[-2:]) / 2
    # Measured in three runs: 2.0 to 2.1 over the first two steps, 0.11 to 0.12 over the last two.
    assert first > 1.0, kl
    assert last < 0.3 * first, kl
    assert metrics[0]["learner/grad_norm"] > 0.1
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (run / "final" / name).is_file(), name
    assert "[aha] done" in done.stdout


def _refused(command: str, recipe: Path) -> str:
    done = subprocess.run([AHA, command, str(recipe)], capture_output=True, text=True, timeout=300,
                          cwd=recipe.parent)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("aha: error: "), done.stderr[-3000:]
    # Refused before the output directory was claimed (so before Ray or any actor started).
    assert not (recipe.parent / "run").exists()
    return lines[0]


def test_mistakes_are_refused_before_anything_starts(tmp_path, teacher_dir):
    import shutil

    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(teacher_dir, other_vocab)
    table = json.loads((other_vocab / "tokenizer.json").read_text())
    vocab = table["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (other_vocab / "tokenizer.json").write_text(json.dumps(table))
    not_causal = tmp_path / "not-causal"
    shutil.copytree(teacher_dir, not_causal)
    config = json.loads((not_causal / "config.json").read_text())
    config["architectures"] = ["Qwen2Model"]
    (not_causal / "config.json").write_text(json.dumps(config))

    def case(name, teacher, command="distill", student=None, tiny=TINY_STUDENT):
        return command, _write_recipe(tmp_path / name, student=student or tmp_path / name / "student", tiny=tiny,
                                      teacher=teacher)

    cases = {
        # the student is an existing directory (the teacher's): its vocabulary is checked at once
        "vocabulary": case("vocabulary", other_vocab, student=teacher_dir, tiny=None),
        # a tiny student not built yet: checked against the tokenizer every tiny model has
        "vocabulary-tiny": case("vocabulary-tiny", other_vocab),
        "no-teacher": case("no-teacher", ""),
        "missing": case("missing", tmp_path / "nowhere"),
        "not-causal": case("not-causal", not_causal),
        "train": case("train", teacher_dir, command="train"),
    }
    with ThreadPoolExecutor(2) as pool:
        lines = dict(zip(cases, pool.map(lambda item: _refused(*item), cases.values())))
    print(lines)
    assert lines["vocabulary"].startswith(f"aha: error: distill.teacher: '{other_vocab}' has another vocabulary")
    assert lines["vocabulary-tiny"].startswith(f"aha: error: distill.teacher: '{other_vocab}' has another vocabulary")
    for name in ("vocabulary", "vocabulary-tiny"):
        assert "token 'a' is id 102 for the student and id 103 for the teacher" in lines[name]
    assert lines["no-teacher"].startswith("aha: error: distill.teacher: is required")
    assert lines["missing"] == f"aha: error: distill.teacher: '{tmp_path / 'nowhere'}' does not exist"
    assert lines["not-causal"].startswith(f"aha: error: distill.teacher: '{not_causal}' is not a causal language model")
    assert "Qwen2Model" in lines["not-causal"]
    assert lines["train"].startswith("aha: error: distill.teacher: is set, so this recipe distils: run it with aha "
                                     "distill")
    for name in cases:
        assert not (tmp_path / name / "student").exists(), name  # nor was the student built


# Off-policy distillation as a pipeline: the teacher writes verified traces, a smaller student
# built here is fine-tuned on them.
PIPELINE = {
    **DISTILL,
    "model.path": "{root}/student", "model.tiny": {"hidden_size": 64, "num_layers": 1, "num_kv_heads": 1},
    "data.synthetic.train_rows": 16,
    "rollout.group_size": None, "rollout.prompts_per_step": None, "rollout.max_new_tokens": 8,
    "reward.weights": {"even_length:score": 1.0},
    "learner": {"micro_batch_size": 8},
    "sft": {"batch_size": 4, "max_length": 64},
    "run": None,
    "pipeline": {"name": "offpolicy", "output_dir": "{root}/pipe", "stages": ["traces", "sft"], "evaluate": False},
    "stages.traces": {"kind": "generate", "model_from": "teacher",
                      "generate": {"num_prompts": 6, "samples_per_prompt": 4}},
    "stages.sft": {"kind": "sft", "model_from": "base", "traces_from": "traces"},
}
# A random tiny teacher never solves a sum; this reward verifies about half of any texts, so the
# pipeline has traces to keep and to train on.
EVEN_LENGTH = "def score(completion, **fields):\n    return 1.0 if len(completion) % 2 == 0 else 0.0\n"


def test_off_policy_distillation_pipeline_generate_then_sft_on_tiny_models(tmp_path, teacher_dir):
    import pyarrow.parquet as pq

    (tmp_path / "even_length.py").write_text(EVEN_LENGTH)
    recipe = write_tiny_recipe(tmp_path / "pipeline.toml", {**PIPELINE, "distill.teacher": str(teacher_dir)})
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([AHA, "pipeline", str(recipe)], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    pipe = tmp_path / "pipe"
    assert f"stage 1/2 traces (generate): starting, from the teacher ({teacher_dir})" in done.stdout

    # The teacher's verified traces: every kept completion passes the reward, written by the teacher.
    traces = pq.read_table(pipe / "traces" / "traces.parquet").to_pylist()
    assert traces and all(len(t["completion"]) % 2 == 0 and t["teacher"] == str(teacher_dir) for t in traces)
    # The student (the base model, a smaller tiny model built here) fine-tuned on exactly them.
    saved = json.loads((pipe / "sft" / "recipe.json").read_text())
    assert saved["model"]["path"] == str(tmp_path / "student") and saved["distill"]["teacher"] == ""
    assert saved["sft"]["train_path"] == str(pipe / "traces" / "traces.parquet")
    steps = read_metrics(pipe / "sft")
    trained = sorted(row for m in steps if "trace_rows" in m for row in m["trace_rows"])
    assert trained == list(range(len(traces)))  # one epoch: every trace once
    assert (pipe / "sft" / "final" / "config.json").is_file()
    config = json.loads((pipe / "sft" / "final" / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 1  # the student, not the teacher

    again = subprocess.run([AHA, "pipeline", str(recipe)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env=env)
    assert again.returncode == 0 and again.stdout.count("skipped, finished before") == 2, again.stdout[-3000:]
