"""The frozen teacher: its scores against an independent transformers forward pass, its batching,
its checks on ids from another model, and the pool of Ray actors (same answers; a dead teacher is
a one-line error within the timeout, not a hang)."""

import random
import time

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from actors.teacher import Teacher, plan_batches
from cluster.roles.recovery import Recovery
from cluster.roles.teacher_pool import TeacherPool
from cluster.wire.errors import RunFailed, RunInterrupted
from cluster.wire.teacher import TeacherScore, TeacherSpec

TIMEOUT_S = 30.0


def _spec(model_dir, **fields) -> TeacherSpec:
    settings = dict(model_path=str(model_dir), tokenizer_path="", dtype="auto", device="auto",
                    max_batch_tokens=64, cpu_threads=0, trust_remote_code=False)
    return TeacherSpec(**{**settings, **fields})


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    return Teacher(_spec(tiny_model_dir))


@pytest.fixture(scope="module")
def pairs(teacher):
    """Prompts and completions of different lengths (an empty completion among them): with 64
    padded tokens per forward they take several batches, some mixing prompt lengths."""
    rng = random.Random(0)
    vocab = teacher.vocab_size()
    shapes = [(5, 9), (12, 3), (3, 20), (7, 0), (20, 30), (4, 4), (9, 14), (6, 1)]
    prompts = [[rng.randrange(vocab) for _ in range(p)] for p, _ in shapes]
    completions = [[rng.randrange(vocab) for _ in range(c)] for _, c in shapes]
    return prompts, completions


def _expected(model_dir, prompts, completions) -> list[TeacherScore]:
    """Each pair alone through a plain, unpadded transformers forward: full-sequence log-softmax."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    scores = []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions):
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + completion])).logits[0].float(), dim=-1)
            rows = logp[len(prompt) - 1:len(prompt) + len(completion) - 1]  # row t predicts token t + 1
            scores.append(TeacherScore(logprobs=rows[torch.arange(len(completion)), completion].tolist(),
                                       greedy_ids=rows.argmax(-1).tolist()))
    return scores


def _assert_same(got: list[TeacherScore], want: list[TeacherScore]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
        assert g.greedy_ids == w.greedy_ids


def test_scores_match_an_independent_forward_pass(teacher, pairs, tiny_model_dir):
    prompts, completions = pairs
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions) if c]
    assert len(plan_batches(lengths, 64)) >= 3  # the call below really runs several forwards
    got = teacher.score(prompts, completions)
    _assert_same(got, _expected(tiny_model_dir, prompts, completions))
    assert got[3] == TeacherScore(logprobs=[], greedy_ids=[])
    assert all(len(s.logprobs) == len(c) for s, c in zip(got, completions))


def test_one_forward_for_every_pair_scores_as_several_do(tiny_model_dir, pairs):
    prompts, completions = pairs
    whole = Teacher(_spec(tiny_model_dir, max_batch_tokens=10_000)).score(prompts, completions)
    _assert_same(whole, _expected(tiny_model_dir, prompts, completions))


def test_batches_stay_under_the_token_budget_and_a_long_sequence_goes_alone():
    lengths = [10, 30, 12, 100, 9, 31]
    batches = plan_batches(lengths, 64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [3]  # 100 tokens: over the budget, alone, and first
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 64
    assert batches[1:] == [[5, 1], [2, 0, 4]]  # longest first: neighbours in length share a batch


@pytest.mark.parametrize("bad", [-1, "vocab"])
def test_an_id_outside_the_vocabulary_is_a_value_error(teacher, bad):
    token = teacher.vocab_size() if bad == "vocab" else bad
    with pytest.raises(ValueError, match=rf"token id {token} is outside the teacher's vocabulary "
                                         rf"\(size {teacher.vocab_size()}\)"):
        teacher.score([[1, 2], [3, 4]], [[5], [6, token]])


def test_mismatched_or_contextless_input_is_a_value_error(teacher):
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        teacher.score([[1], [2]], [[3]])
    with pytest.raises(ValueError, match="pair 0: an empty prompt"):
        teacher.score([[]], [[3]])


def test_score_lengths_are_checked():
    with pytest.raises(ValueError, match="1 greedy ids for 2 logprobs"):
        TeacherScore(logprobs=[-1.0, -2.0], greedy_ids=[3])


def test_model_info(teacher, tiny_model_dir):
    info = teacher.model_info()
    assert (info.model_path, info.dtype, info.device) == (str(tiny_model_dir), "float32", "cpu")
    assert info.vocab_size == teacher.model.config.vocab_size
    assert info.num_parameters == sum(p.numel() for p in teacher.model.parameters())
    assert not any(p.requires_grad for p in teacher.model.parameters()) and not teacher.model.training


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_cluster, tiny_model_dir):
    teachers = TeacherPool(_spec(tiny_model_dir), 2, cpus_per_teacher=0.5, gpus_per_teacher=0, timeout_s=TIMEOUT_S)
    yield teachers
    teachers.shutdown()


@pytest.mark.stack
def test_a_teacher_that_cannot_load_its_model_is_one_line_at_start(ray_cluster, tmp_path):
    with pytest.raises(RunFailed, match=r"^teacher start: the teacher could not start: OSError: ") as caught:
        TeacherPool(_spec(tmp_path / "no_model"), 1, cpus_per_teacher=0.5, gpus_per_teacher=0, timeout_s=TIMEOUT_S)
    assert "\n" not in str(caught.value)


@pytest.mark.stack
def test_the_pool_answers_as_the_plain_class(pool, teacher, pairs):
    prompts, completions = pairs
    want = teacher.score(prompts, completions)
    pending = [pool.submit(prompts, completions) for _ in range(2)]  # both teachers at once
    assert sorted(p.teacher for p in pending) == [0, 1]
    for call in pending:
        _assert_same(pool.collect(call), want)
    assert [info.vocab_size for info in pool.infos] == [teacher.vocab_size()] * 2


@pytest.mark.stack
def test_an_id_outside_the_vocabulary_is_one_line_through_the_pool(pool):
    with pytest.raises(RunFailed, match=r"^teacher \d: ValueError: pair 0: token id 100000 is outside") as caught:
        pool.score([[1, 2]], [[100000]])
    assert "\n" not in str(caught.value)


@pytest.mark.stack
def test_a_teacher_that_does_not_answer_is_a_clear_error_within_the_timeout(pool, pairs, monkeypatch):
    # The fixture's pool may replace no teacher (cluster.max_restarts = 0): one line, in time.
    prompts, completions = pairs
    busy = [t.__ray_call__.remote(lambda self: time.sleep(3)) for t in pool.teachers]  # both, so either is next
    monkeypatch.setattr(pool, "timeout_s", 1.0)
    with pytest.raises(RunInterrupted, match=r"^teacher \d did not answer within 1 s \(cluster.timeout_s\); "
                                             r"cluster.max_restarts = 0, so no teacher actor is replaced$"):
        pool.score(prompts, completions)
    ray.get(busy, timeout=TIMEOUT_S)


@pytest.mark.stack
def test_a_killed_teacher_is_replaced_and_its_pairs_graded_again(pool, teacher, pairs, monkeypatch):
    prompts, completions = pairs
    monkeypatch.setattr(pool, "recovery", Recovery(max_restarts=1))
    dead = pool.teachers[0]
    ray.kill(dead)
    for _ in range(2):  # round-robin: one of the two calls goes to teacher 0
        _assert_same(pool.score(prompts, completions), teacher.score(prompts, completions))
    assert pool.recovery.restarts["teacher"] == 1 and pool.teachers[0] is not dead
    # Past the budget: one line, in time.
    ray.kill(pool.teachers[0])
    start = time.monotonic()
    with pytest.raises(RunInterrupted, match=r"^teacher 0 died \(.*the 1 teacher restarts that "
                                             r"cluster.max_restarts allows are used up$") as caught:
        for _ in range(2):
            pool.score(prompts, completions)
    assert time.monotonic() - start < TIMEOUT_S
    assert "\n" not in str(caught.value)
