"""Pure pieces of the learner: micro-batch layout, the learning-rate schedule, the spec."""

import math
from pathlib import Path

import pytest
import torch

from cluster.recipe import load_recipe
from learner.batching import TrainSequence, collate, micro_batches, token_logprobs
from learner.optim import deepspeed_config, lr_multiplier
from cluster.startup.specs import learner_spec


def test_collate_aligns_masks_and_behaviour_logprobs_to_targets():
    a = TrainSequence(prompt_ids=[5, 6], completion_ids=[7, 8, 9], behaviour_logprobs=[-1.0, -2.0, -3.0], advantage=0.5)
    b = TrainSequence(prompt_ids=[4], completion_ids=[3], behaviour_logprobs=[-0.5], advantage=-1.0)
    batch = collate([a, b], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # Column t predicts input_ids[:, t + 1]: a's completion is predicted at columns 1..3.
    assert batch.loss_mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]
    assert batch.behaviour_logp.tolist() == [[0, -1, -2, -3], [-0.5, 0, 0, 0]]
    assert batch.advantages.tolist() == [0.5, -1.0]
    assert batch.num_tokens == 4


def test_token_logprobs_pick_the_next_token():
    logits = torch.log(torch.tensor([[[0.1, 0.9], [0.7, 0.3], [0.5, 0.5]]]))
    ids = torch.tensor([[0, 1, 0]])
    # position 0 predicts id 1 (p=0.9), position 1 predicts id 0 (p=0.7)
    assert torch.allclose(token_logprobs(logits, ids), torch.log(torch.tensor([[0.9, 0.7]])))


def test_micro_batches_keep_order_and_size():
    seqs = [TrainSequence([1], [i + 2], [-1.0], float(i)) for i in range(7)]
    batches = micro_batches(seqs, 3, pad_id=0)
    assert [b.advantages.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError):
        micro_batches(seqs, 0, pad_id=0)


@pytest.mark.parametrize("bad", [dict(prompt_ids=[], completion_ids=[1], behaviour_logprobs=[-1.0]),
                                 dict(prompt_ids=[1], completion_ids=[1, 2], behaviour_logprobs=[-1.0])])
def test_inconsistent_sequences_are_refused(bad):
    with pytest.raises(ValueError):
        TrainSequence(advantage=0.0, **bad)


@pytest.mark.parametrize("schedule, step, expected", [
    ("constant", 0, 1 / 4), ("constant", 3, 1.0), ("constant", 50, 1.0),  # warm-up 4: (step+1)/4
    ("linear", 4, 1.0), ("linear", 7, 0.5), ("linear", 10, 0.0), ("linear", 20, 0.0),  # 4..10 -> 1..0
    ("cosine", 4, 1.0), ("cosine", 7, 0.5), ("cosine", 10, 0.0),  # half cosine over 6 steps
])
def test_lr_schedule_by_hand(schedule, step, expected):
    value = lr_multiplier(step, warmup_steps=4, total_steps=10, schedule=schedule)
    assert math.isclose(value, expected, abs_tol=1e-12)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, warmup_steps=0, total_steps=1, schedule="step")


def test_deepspeed_config_leaves_accumulation_to_the_learner():
    config = deepspeed_config(zero_stage=3, micro_batch_size=4, grad_clip=1.0, bf16=False)
    assert config["gradient_accumulation_steps"] == 1
    assert config["zero_optimization"]["stage"] == 3 and config["gradient_clipping"] == 1.0
    assert config["bf16"] == {"enabled": False}


def test_learner_spec_follows_the_recipe():
    recipe = load_recipe(Path(__file__).parent.parent / "deploy/recipes/arith-zero-cpu.toml",
                         ["--algorithm.kl_coef", "0.05", "--learner.zero_stage", "3", "--run.steps", "7"])
    spec = learner_spec(recipe, recipe.model.path)
    assert (spec.model_path, spec.zero_stage, spec.kl_coef, spec.total_steps) == ("runs/demo/base-model", 3, 0.05, 7)
    assert (spec.clip_high, spec.max_new_tokens, spec.lr) == (recipe.algorithm.clip_high, 48, recipe.learner.lr)


def test_a_rank_tells_whether_it_sees_the_drivers_run_directory(tmp_path):
    from learner.learner import Learner

    recipe = load_recipe(Path(__file__).parent.parent / "deploy/recipes/arith-zero-cpu.toml")
    rank = Learner(learner_spec(recipe, recipe.model.path), rank=1, world_size=2)  # no set-up needed
    marker = tmp_path / ".aha-storage-check"
    marker.write_text("token")
    assert rank.probe_storage(str(marker), "token") == ""
    assert (tmp_path / ".aha-storage-check.rank1").read_text() == "token"
    assert rank.probe_storage(str(marker), "other").startswith("learner rank 1 on ")
    assert "reads other content" in rank.probe_storage(str(marker), "other")
    missing = rank.probe_storage(str(tmp_path / "elsewhere" / "m"), "token")  # another node's disk
    assert "cannot use" in missing and "No such file or directory" in missing
