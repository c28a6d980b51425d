"""Packed (padding-free) micro-batches: the same losses as padded ones, and no sequence sees its
neighbour. On the real model (a tiny Qwen2 through transformers' own masking), not a mock."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.batching import (TrainSequence, collate, collate_packed, empty_micro_batch, micro_batches, pack_rows,
                              plan_micro_batches, token_logprobs)
from learner.losses import policy_loss
from learner.sft_loss import sft_loss


def test_pack_rows_first_fit_decreasing_by_hand():
    # width 10: 7 opens row 0, 6 row 1, 3 fits row 0 (7+3), 3 fits row 1 (6+3), 2 opens row 2
    assert pack_rows([3, 7, 2, 6, 3], 10) == [[1, 0], [3, 4], [2]]
    assert pack_rows([12, 1], 10) == [[0], [1]]  # too long for the width: a row of its own
    with pytest.raises(ValueError):
        pack_rows([1], 0)


def test_plan_packed_and_padded():
    assert plan_micro_batches([3, 7, 2, 6, 3], 2, packing=True, pack_length=10) == [[[1, 0], [3, 4]], [[2]]]
    assert plan_micro_batches([3, 7, 2], 2, packing=False) == [[[0], [1]], [[2]]]
    assert plan_micro_batches([], 2, packing=True) == []


def test_collate_packed_layout_by_hand():
    a = TrainSequence([5, 6], [7, 8], [-1.0, -2.0], advantage=0.5)
    b = TrainSequence([4], [3], [-0.5], advantage=-1.0, completion_mask=[1])
    batch = collate_packed([[a, b]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 4, 3]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1]]
    # targets: a's completion at columns 1, 2 (predicting 7, 8); column 3 predicts b's prompt: not
    # a target; b's completion at column 4 (predicting 3)
    assert batch.loss_mask.tolist() == [[0, 1, 1, 0, 1]]
    assert batch.behaviour_logp.tolist() == [[0, -1, -2, 0, -0.5]]
    assert batch.advantages.tolist() == [[0, 0.5, 0.5, 0, -1.0]]
    assert batch.segments.tolist() == [[-1, 0, 0, -1, 1]]
    assert batch.num_sequences == 2 and batch.attention_mask is None


def test_completion_mask_and_empty_micro_batch():
    seq = TrainSequence([1, 2], [3, 4, 5], completion_mask=[1, 0, 1])
    assert collate([seq], pad_id=0).loss_mask.tolist() == [[0, 1, 0, 1]]
    empty = empty_micro_batch(pad_id=0)
    assert empty.num_tokens == 0 and empty.num_sequences == 0


def _sequences(seed: int, count: int = 9) -> list[TrainSequence]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = [rng.randrange(4, 60) for _ in range(rng.randrange(1, 6))]
        completion = [rng.randrange(4, 60) for _ in range(rng.randrange(2, 20))]  # lengths vary ~4:1 and more
        out.append(TrainSequence(prompt, completion, [-3.0 + rng.uniform(-0.3, 0.3) for _ in completion],
                                 advantage=rng.uniform(-1, 1)))
    return out


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _total(model, sequences, *, packing, objective, loss_agg="token_mean", pack_length=0):
    """Whole-batch loss from streamed micro-batches (sum of numerators / sum of denominators)
    and the gradient of the first layer's weights."""
    model.zero_grad()
    numerator = denominator = 0.0
    for batch in micro_batches(sequences, 3, pad_id=0, packing=packing, pack_length=pack_length):
        logp = token_logprobs(model(**batch.model_inputs()).logits, batch.input_ids)
        if objective == "sft":
            out = sft_loss(logp, batch.loss_mask)
        else:
            out = policy_loss(logp, logp.detach(), batch.advantages, batch.loss_mask,
                              behaviour_logp=batch.behaviour_logp, loss_agg=loss_agg, max_len=20,
                              segments=batch.segments, num_sequences=batch.num_sequences)
        out.numerator.backward()
        numerator, denominator = numerator + out.numerator.item(), denominator + out.denominator.item()
    grad = model.model.layers[0].self_attn.q_proj.weight.grad / denominator
    return numerator / denominator, grad.clone()


@pytest.mark.parametrize("objective, loss_agg", [("sft", "token_mean"), ("grpo", "token_mean"),
                                                 ("grpo", "seq_mean_token_mean"), ("grpo", "seq_mean_token_sum_norm")])
def test_packed_loss_and_gradient_equal_padded(model, objective, loss_agg):
    sequences = _sequences(1)
    padded, padded_grad = _total(model, sequences, packing=False, objective=objective, loss_agg=loss_agg)
    packed, packed_grad = _total(model, sequences, packing=True, objective=objective, loss_agg=loss_agg,
                                 pack_length=40)
    assert abs(packed - padded) < 1e-5
    assert torch.allclose(packed_grad, padded_grad, atol=1e-6, rtol=1e-4)
    # the packing did pack: fewer rows than sequences
    assert len([r for mb in plan_micro_batches([len(s) for s in sequences], 3, packing=True, pack_length=40)
                for r in mb]) < len(sequences)


def test_a_packed_sequence_cannot_see_its_neighbour(model):
    a = TrainSequence([5, 6, 7], [8, 9, 10, 11])
    b = TrainSequence([12, 13], [14, 15, 16])
    changed = TrainSequence([40, 41, 42], [43, 44, 45, 46])  # a's neighbour replaced
    with torch.no_grad():
        first = collate_packed([[a, b]], pad_id=0)
        second = collate_packed([[changed, b]], pad_id=0)
        logits_first = model(**first.model_inputs()).logits[0, len(a):]
        logits_second = model(**second.model_inputs()).logits[0, len(changed):]
        alone = model(input_ids=torch.tensor([b.prompt_ids + b.completion_ids])).logits[0]
    assert torch.allclose(logits_first, logits_second, atol=1e-6)
    assert torch.allclose(logits_first, alone, atol=1e-5)
    # the check can fail: the same row under one plain causal mask does let b see a
    with torch.no_grad():
        leaky = model(input_ids=first.input_ids).logits[0, len(a):]
    assert not torch.allclose(logits_first, leaky, atol=1e-3)


def test_sft_loss_ignores_prompt_tokens_and_counts_eos(model):
    eos = 1
    seq = TrainSequence([5, 6, 7], [8, 9, eos])
    batch = collate_packed([[seq]], pad_id=0)
    assert batch.loss_mask.sum() == 3  # 8, 9 and EOS; no prompt token
    model.zero_grad()
    logp = token_logprobs(model(**batch.model_inputs()).logits, batch.input_ids)
    logp.retain_grad()
    sft_loss(logp, batch.loss_mask).numerator.backward()
    # the loss's gradient wrt the prompt positions' targets is exactly zero
    assert logp.grad[0, :2].abs().sum() == 0 and logp.grad[0, 2:].abs().min() > 0
    assert sft_loss(logp.detach(), batch.loss_mask).numerator == -logp.detach()[0, 2:].sum()
