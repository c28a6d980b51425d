"""On-policy distillation without Ray: the per-token advantages and the reverse-KL loss on
hand-computed tensors, the teacher logprobs' columns in padded and packed micro-batches (and the
same losses from both, on the real tiny model), where two real tokenizers differ, and the
recipe's [distill] checks."""

import json
import math
import random
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cluster.commands.distill import vocabulary_difference
from cluster.recipe import RecipeError, recipe_from_dict
from learner.batching import TrainSequence, collate, collate_packed, micro_batches, token_logprobs
from learner.distill_loss import distill_token_advantages, reverse_kl_loss
from learner.losses import policy_loss
from losses_helpers import F64, LN2, MASK, close, t

# ---------------------------------------------------------------- distill_token_advantages


def test_token_advantages_by_hand():
    # r = student - teacher = [0.5, -1, 0]; 0.25 * 2 - 0.5 * r = [0.25, 1.0, 0.5]
    got = distill_token_advantages(t([-1.0, -2.0, -0.5]), t([-1.5, -1.0, -0.5]), 2.0, kl_coef=0.5,
                                   reward_weight=0.25)
    close(got, [0.25, 1.0, 0.5])
    # pure distillation (reward_weight 0): exactly -kl_coef * r, whatever the group advantage
    close(distill_token_advantages(t([-1.0, -2.0]), t([-1.5, -1.0]), 5.0, kl_coef=2.0, reward_weight=0.0),
          [-1.0, 2.0])


def test_a_student_that_matches_its_teacher_gets_exactly_the_task_term():
    logp = t([-0.3, -7.25, -1.0])
    close(distill_token_advantages(logp, logp.clone(), -1.5, kl_coef=3.0, reward_weight=0.5), [-0.75] * 3, atol=0)


@pytest.mark.parametrize("student, teacher", [(t([-1.0, -2.0]), t([-1.0])), (t([[-1.0]]), t([[-1.0]]))])
def test_token_advantages_refuse_other_shapes(student, teacher):
    with pytest.raises(ValueError, match=r"must both be \(T,\)"):
        distill_token_advantages(student, teacher, 0.0, kl_coef=1.0, reward_weight=0.0)


# ---------------------------------------------------------------- reverse_kl_loss

# MASK: 2 sequences x 3 positions, lengths 2 and 1 (positions (0, 2), (1, 1), (1, 2) are masked).
LOGP = [[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]]
TEACHER = [[-2.0, -1.0, -3.0], [-2.5, -1.0, -1.0]]  # gaps logp - teacher: 1, -1 and 2
# exp(logp - behaviour): 2 (ln 2 above the engine), 1, and 0.5 (ln 2 below)
BEHAVIOUR = [[-1.0 - LN2, -2.0, -3.0], [-0.5 + LN2, -1.0, -1.0]]


def _loss(logp, teacher=TEACHER, behaviour=BEHAVIOUR, mask=MASK, tis_cap=1.5):
    logp = t(logp, requires_grad=True) if not isinstance(logp, torch.Tensor) else logp
    out = reverse_kl_loss(logp, torch.as_tensor(teacher, dtype=F64), torch.as_tensor(behaviour, dtype=F64), mask,
                          tis_cap=tis_cap)
    (out.numerator / out.denominator).backward()
    return out, logp.grad


def test_reverse_kl_loss_by_hand():
    out, grad = _loss(LOGP)
    # w = min(ratio, 1.5) = [1.5, 1, 0.5]; w * gap^2 / 2 = 0.75 + 0.5 + 1.0 = 2.25 over 3 tokens
    close(out.numerator, 2.25)
    close(out.denominator, 3.0)
    assert out.num_tokens == 3
    # k1 sum 1 - 1 + 2 = 2; weights 1.5 + 1 + 0.5 = 3
    assert out.metric_sums == pytest.approx({"reverse_kl": 2.0, "tis_weight": 3.0}, abs=1e-12)
    # d/dlogp of w * gap^2 / 2 is w * gap (w detached), over the 3 tokens: [1.5, -1, 1] / 3
    close(grad, [[1.5 / 3, -1.0 / 3, 0.0], [1.0 / 3, 0.0, 0.0]])


def test_reverse_kl_gradient_is_the_weighted_gap_per_token():
    # The same identity on random values: grad = (logp - teacher) * w / token count, where the
    # loss is active, and 0 elsewhere.
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(4, 7, generator=gen, dtype=torch.float64) * 5
    teacher = -torch.rand(4, 7, generator=gen, dtype=torch.float64) * 5
    behaviour = logp + (torch.rand(4, 7, generator=gen, dtype=torch.float64) - 0.5)
    mask = (torch.rand(4, 7, generator=gen) < 0.6).double()
    out, grad = _loss(logp.clone().requires_grad_(True), teacher, behaviour, mask, tis_cap=1.2)
    weight = torch.exp(logp - behaviour).clamp(max=1.2)
    expected = torch.where(mask.bool(), (logp - teacher) * weight, 0.0) / mask.sum()
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    assert 0 < (weight == 1.2).sum() < mask.numel()  # the cap was met at some tokens, not all


def test_a_student_equal_to_its_teacher_has_zero_loss_and_zero_gradient():
    out, grad = _loss(LOGP, teacher=LOGP)
    assert out.numerator.item() == 0.0 and out.metric_sums["reverse_kl"] == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    # the check can fail: one token off the teacher moves both
    out, grad = _loss(LOGP, teacher=[[-1.0, -2.0, -3.0], [-0.4, -1.0, -1.0]])
    assert out.numerator.item() > 0 and grad[1, 0] < 0


def test_truncated_importance_weight_caps_and_zero_turns_it_off():
    # ratios are [2, 1, 0.5] at the three tokens
    cases = {1.5: [1.5, 1.0, 0.5], 3.0: [2.0, 1.0, 0.5], 0.75: [0.75, 0.75, 0.5], 0.0: [1.0, 1.0, 1.0]}
    for cap, weights in cases.items():
        out, grad = _loss(LOGP, tis_cap=cap)
        assert out.metric_sums["tis_weight"] == pytest.approx(sum(weights), abs=1e-12), cap
        # gap^2 / 2 = [0.5, 0.5, 2]
        close(out.numerator, weights[0] * 0.5 + weights[1] * 0.5 + weights[2] * 2.0)
        close(grad, [[weights[0] / 3, -weights[1] / 3, 0.0], [2 * weights[2] / 3, 0.0, 0.0]])


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_masked_positions_never_change_loss_or_gradient(garbage):
    clean_out, clean_grad = _loss(LOGP)

    def dirty(values):
        return [[v if MASK[r, c] else garbage for c, v in enumerate(row)] for r, row in enumerate(values)]

    out, grad = _loss(dirty(LOGP), dirty(TEACHER), dirty(BEHAVIOUR))
    assert out.numerator.item() == clean_out.numerator.item()
    assert out.metric_sums == clean_out.metric_sums and out.num_tokens == 3
    assert torch.equal(grad, clean_grad), grad


def test_reverse_kl_loss_refuses_mismatched_shapes():
    logp = t(LOGP)
    with pytest.raises(ValueError, match=r"must all be \(B, T\)"):
        reverse_kl_loss(logp, t(TEACHER)[:, :2], t(BEHAVIOUR), MASK, tis_cap=2.0)
    with pytest.raises(ValueError, match=r"must all be \(B, T\)"):
        reverse_kl_loss(logp[0], t(TEACHER)[0], t(BEHAVIOUR)[0], MASK[0], tis_cap=2.0)  # (T,) is not (B, T)


# ---------------------------------------------------------------- batching

A = TrainSequence([5, 6], [7, 8, 9], [-0.5, -0.25, -0.75], token_advantages=[0.5, -1.0, 2.0],
                  teacher_logprobs=[-1.0, -2.0, -3.0])
B = TrainSequence([4], [3], [-0.125], advantage=9.0, token_advantages=[4.0], teacher_logprobs=[-4.0])


def test_padded_layout_puts_teacher_logprobs_and_token_advantages_on_the_targets():
    batch = collate([A, B], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]]
    # column t predicts input t + 1: A's completion is predicted at columns 1..3, B's at column 0
    assert batch.loss_mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert batch.teacher_logp.tolist() == [[0, -1, -2, -3], [-4, 0, 0, 0]]
    assert batch.advantages.tolist() == [[0, 0.5, -1, 2], [4, 0, 0, 0]]  # per token, not B's 9.0
    assert batch.behaviour_logp.tolist() == [[0, -0.5, -0.25, -0.75], [-0.125, 0, 0, 0]]


def test_packed_layout_puts_teacher_logprobs_and_token_advantages_on_the_targets():
    batch = collate_packed([[A, B]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 4, 3]]
    # A's targets at columns 1..3; column 4 predicts B's prompt (no target); B's at column 5
    assert batch.loss_mask.tolist() == [[0, 1, 1, 1, 0, 1]]
    assert batch.teacher_logp.tolist() == [[0, -1, -2, -3, 0, -4]]
    assert batch.advantages.tolist() == [[0, 0.5, -1, 2, 0, 4]]
    assert batch.segments.tolist() == [[-1, 0, 0, 0, -1, 1]]


def test_sequences_without_a_teacher_have_no_teacher_columns_and_mixing_is_refused():
    plain = TrainSequence([5, 6], [7, 8], [-1.0, -2.0], advantage=0.5)
    assert collate([plain], pad_id=0).teacher_logp is None
    assert collate_packed([[plain]], pad_id=0).teacher_logp is None
    with pytest.raises(ValueError, match="some sequences carry teacher logprobs and some do not"):
        collate([A, plain], pad_id=0)
    with pytest.raises(ValueError, match="some sequences carry teacher logprobs and some do not"):
        collate_packed([[A], [plain]], pad_id=0)
    with pytest.raises(ValueError, match="2 teacher logprobs for 3 completion tokens"):
        TrainSequence([5], [7, 8, 9], teacher_logprobs=[-1.0, -2.0])


def _distill_sequences(seed: int, count: int = 9) -> list[TrainSequence]:
    """Sequences of varied lengths with per-token advantages, engine and teacher logprobs."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        prompt = [rng.randrange(4, 60) for _ in range(rng.randrange(1, 6))]
        completion = [rng.randrange(4, 60) for _ in range(rng.randrange(2, 20))]
        out.append(TrainSequence(prompt, completion, [-5.5 + rng.uniform(-0.3, 0.3) for _ in completion],
                                 token_advantages=[rng.uniform(-1, 1) for _ in completion],
                                 teacher_logprobs=[-rng.uniform(0.1, 8) for _ in completion]))
    return out


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    # float64, so that 1e-6 between the two layouts is far above the arithmetic's noise
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()


def _streamed(model, sequences, *, packing: bool, objective: str):
    """The whole batch's loss from micro-batches of 3 rows, and one weight's gradient."""
    model.zero_grad()
    numerator = denominator = 0.0
    for batch in micro_batches(sequences, 3, pad_id=0, packing=packing, pack_length=40):
        logp = token_logprobs(model(**batch.model_inputs()).logits, batch.input_ids).double()
        if objective == "kl":
            out = reverse_kl_loss(logp, batch.teacher_logp, batch.behaviour_logp, batch.loss_mask, tis_cap=2.0)
        else:
            out = policy_loss(logp, logp.detach(), batch.advantages, batch.loss_mask,
                              behaviour_logp=batch.behaviour_logp, tis_cap=2.0, segments=batch.segments,
                              num_sequences=batch.num_sequences)
        out.numerator.backward()
        numerator, denominator = numerator + out.numerator.item(), denominator + out.denominator.item()
    grad = model.model.layers[0].self_attn.q_proj.weight.grad / denominator
    return numerator / denominator, grad.clone()


@pytest.mark.parametrize("objective", ["kl", "grpo"])
def test_packed_and_padded_give_the_same_distillation_losses(model, objective):
    sequences = _distill_sequences(1)
    padded, padded_grad = _streamed(model, sequences, packing=False, objective=objective)
    packed, packed_grad = _streamed(model, sequences, packing=True, objective=objective)
    assert abs(packed - padded) < 1e-6, (packed, padded)
    assert torch.allclose(packed_grad, padded_grad, atol=1e-9, rtol=1e-6)
    assert abs(padded) > 1e-2  # a loss worth comparing
    # the check can fail: the same sequences with their teacher logprobs (or token advantages)
    # reversed give another loss
    flipped = [TrainSequence(s.prompt_ids, s.completion_ids, s.behaviour_logprobs,
                             token_advantages=s.token_advantages[::-1], teacher_logprobs=s.teacher_logprobs[::-1])
               for s in sequences]
    assert abs(_streamed(model, flipped, packing=True, objective=objective)[0] - padded) > 1e-4


# ---------------------------------------------------------------- vocabulary_difference


def _tokenizer_copy(model_dir, out_dir, edit):
    """The model's tokenizer files, with `edit(tokenizer.json as a dict)` applied, in `out_dir`."""
    out_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(model_dir / name, out_dir / name)
    table = json.loads((out_dir / "tokenizer.json").read_text())
    edit(table)
    (out_dir / "tokenizer.json").write_text(json.dumps(table))
    return AutoTokenizer.from_pretrained(out_dir)


def test_vocabulary_difference_on_real_tokenizers(tiny_model_dir, tmp_path):
    from cluster.inputs.tiny_model import build_tiny_model
    from spec_helpers import tiny_spec

    student = AutoTokenizer.from_pretrained(tiny_model_dir)
    # another tiny model (other weights, other shape): the same tokenizer, so no difference
    other = build_tiny_model(tmp_path / "other", tiny_spec(seed=5, num_layers=1))
    assert vocabulary_difference(AutoTokenizer.from_pretrained(other), student) is None
    a, b = student.get_vocab()["a"], student.get_vocab()["b"]

    def swap(table):
        vocab = table["model"]["vocab"]
        vocab["a"], vocab["b"] = vocab["b"], vocab["a"]

    swapped = _tokenizer_copy(tiny_model_dir, tmp_path / "swapped", swap)
    assert swapped("ab")["input_ids"] == [b, a]  # really another vocabulary
    size = len(student.get_vocab())
    assert vocabulary_difference(swapped, student) == (
        f"{size} tokens for the teacher and {size} for the student; token 'a' is id {a} for the student "
        f"and id {b} for the teacher")

    def rename(table):  # 'z' becomes a token the student does not have, at the same id
        vocab = table["model"]["vocab"]
        vocab["ζ"] = vocab.pop("z")

    renamed = _tokenizer_copy(tiny_model_dir, tmp_path / "renamed", rename)
    z = student.get_vocab()["z"]
    assert vocabulary_difference(renamed, student) == (
        f"{size} tokens for the teacher and {size} for the student; token 'z' is id {z} for the student and "
        "absent from the teacher's")
    # the teacher has every student token and one more
    bigger = AutoTokenizer.from_pretrained(tiny_model_dir)
    bigger.add_tokens(["<extra>"])
    assert vocabulary_difference(bigger, student) == (
        f"{size + 1} tokens for the teacher and {size} for the student; token '<extra>' (teacher id {size}) is "
        "absent from the student's")


def test_vocabulary_difference_names_another_end_of_sequence(tiny_model_dir, tmp_path):
    student = AutoTokenizer.from_pretrained(tiny_model_dir)
    (tmp_path / "eos").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / "eos" / name)
    config = json.loads((tmp_path / "eos" / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (tmp_path / "eos" / "tokenizer_config.json").write_text(json.dumps(config))
    teacher = AutoTokenizer.from_pretrained(tmp_path / "eos")
    assert teacher.get_vocab() == student.get_vocab()
    assert vocabulary_difference(teacher, student) == (
        f"the end-of-sequence token is id {teacher.eos_token_id} for the teacher and {student.eos_token_id} "
        "for the student")


# ---------------------------------------------------------------- recipe checks


def _recipe(**distill):
    return recipe_from_dict({"model": {"path": "models/student"}, "data": {"train_path": "data/train.parquet"},
                             "cluster": {"num_cpus": 8}, "distill": {"teacher": "models/teacher", **distill}})


def _recipe_error(**distill) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        _recipe(**distill)
    assert "\n" not in str(info.value)
    return info.value


def test_a_valid_distill_recipe_loads():
    recipe = _recipe(loss="kl", kl_coef=0.5)
    assert (recipe.distill.teacher, recipe.distill.loss, recipe.distill.kl_coef) == ("models/teacher", "kl", 0.5)
    assert _recipe(kl_coef=0.0, reward_weight=1.0).distill.reward_weight == 1.0  # the task term alone is allowed


@pytest.mark.parametrize("fields, key, words", [
    ({"loss": "kl", "reward_weight": 0.5}, "distill.reward_weight", "no effect with distill.loss = 'kl'"),
    ({"kl_coef": 0.0, "reward_weight": 0.0}, "distill.kl_coef", "both 0"),
    ({"kl_coef": -0.1}, "distill.kl_coef", ">= 0"),
    ({"kl_coef": math.nan}, "distill.kl_coef", "finite"),
    ({"reward_weight": -1.0}, "distill.reward_weight", ">= 0"),
    ({"num_teachers": 0}, "distill.num_teachers", ">= 1"),
    ({"max_batch_tokens": 0}, "distill.max_batch_tokens", ">= 1"),
    ({"cpu_threads": -2}, "distill.cpu_threads", ">= 0"),
    ({"loss": "forward_kl"}, "distill.loss", "forward_kl"),
])
def test_bad_distill_settings_name_their_key(fields, key, words):
    err = _recipe_error(**fields)
    assert err.key == key and str(err).startswith(f"{key}: ") and words in str(err), str(err)


def test_dynamic_sampling_with_a_teacher_is_refused():
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"model": {"path": "m"}, "data": {"train_path": "d.parquet"}, "cluster": {"num_cpus": 8},
                          "algorithm": {"dynamic_sampling": True}, "distill": {"teacher": "t"}})
    assert info.value.key == "algorithm.dynamic_sampling" and "aha distill" in str(info.value)
    # without a teacher it is GRPO's setting, allowed
    plain = recipe_from_dict({"model": {"path": "m"}, "data": {"train_path": "d.parquet"}, "cluster": {"num_cpus": 8},
                              "algorithm": {"dynamic_sampling": True}})
    assert plain.algorithm.dynamic_sampling


def test_teacher_cpus_count_in_the_cpu_budget():
    # 2 scorers x 1 CPU etc. fit 8 CPUs; four teachers of 2 CPUs each do not
    assert _recipe(num_teachers=1).cluster.teacher_cpus == 1.0
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({"model": {"path": "m"}, "data": {"train_path": "d.parquet"}, "cluster": {"num_cpus": 8,
                          "teacher_cpus": 2.0}, "distill": {"teacher": "t", "num_teachers": 4}})
    assert "teachers 8" in str(info.value), str(info.value)


def test_a_student_larger_than_its_teacher_is_a_warning_and_counts_come_from_the_weights(tiny_model_dir, tmp_path):
    from cluster.commands.distill import check_teacher, parameter_count
    from cluster.inputs.tiny_model import build_tiny_model
    from spec_helpers import tiny_spec

    small = build_tiny_model(tmp_path / "small", tiny_spec(seed=5, num_layers=1))
    counted = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(small).parameters())
    assert parameter_count(small) == counted  # tied embeddings: the head is not a second copy
    big = parameter_count(tiny_model_dir)
    assert big > counted and parameter_count(tmp_path) is None

    def recipe(student, teacher):
        return recipe_from_dict({"model": {"path": str(student)}, "data": {"train_path": "data/train.parquet"},
                                 "cluster": {"num_cpus": 8}, "distill": {"teacher": str(teacher)}})

    assert check_teacher(recipe(small, tiny_model_dir)) == []
    assert check_teacher(recipe(tiny_model_dir, small)) == [
        f"the student ({big:,} parameters) is larger than its teacher ({counted:,}); distilling as asked"]
