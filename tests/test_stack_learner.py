"""The DeepSpeed ZeRO learner group on the real stack: 2 ranks as Ray actors, gloo on CPU.

The reference is a single process in plain torch: the same model, the GRPO token-mean loss
written out by hand over the whole step, `torch.optim.AdamW`. Adam is nearly invariant to the
scale of the gradient, so the tests also compare the gradient norm and use an epsilon that
is not negligible next to the gradients: a wrong normaliser cannot hide.
"""

import math
import random

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from cluster.roles.learner_group import LearnerGroup
from cluster.output.checkpoints import CheckpointError, complete_checkpoints
from cluster.run.resume_point import save_checkpoint
from cluster.wire.errors import RunFailed, RunInterrupted, original_failure
from learner.batching import TrainSequence, collate, token_logprobs
from learner.spec import LearnerSpec
from spec_helpers import learner_spec

pytestmark = pytest.mark.stack
GROUPS, GROUP_SIZE = 4, 4


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def groups():
    """4 groups x 4 completions of unequal lengths, rewards 0/1 with group-normalised advantages."""
    rng = random.Random(0)
    out = []
    for _ in range(GROUPS):
        prompt = [rng.randrange(10, 100) for _ in range(rng.randrange(3, 8))]
        rewards = [float(rng.random() < 0.5) for _ in range(GROUP_SIZE)]
        mean = sum(rewards) / GROUP_SIZE
        std = (sum((r - mean) ** 2 for r in rewards) / GROUP_SIZE) ** 0.5
        group = []
        for reward in rewards:
            completion = [rng.randrange(10, 100) for _ in range(rng.randrange(2, 12))]
            behaviour = [-4.6 + rng.uniform(-0.3, 0.3) for _ in completion]
            group.append(TrainSequence(prompt, completion, behaviour, (reward - mean) / (std + 1e-6)))
        out.append(group)
    return out


def spec_for(model_dir, **overrides) -> LearnerSpec:
    settings = dict(zero_stage=2, lr=1e-3, adam_eps=1e-3, grad_clip=0.0, micro_batch_size=3, tis_cap=2.0,
                    loss_agg="token_mean", total_steps=1000, timeout_s=120.0)
    return learner_spec(model_dir, **{**settings, **overrides})


def reference_step(model_dir, groups, spec: LearnerSpec):
    """One step in plain torch over the whole step at once; returns (initial, updated, grad norm)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=spec.adam_betas, eps=spec.adam_eps,
                                  weight_decay=spec.weight_decay)
    batch = collate([s for g in groups for s in g], pad_id=model.config.pad_token_id)
    logp = token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                          batch.input_ids)
    # GRPO with ratio pi/pi_old (= 1, on-policy) and a truncated IS weight pi_old/pi_behaviour.
    ratio = torch.exp(logp - logp.detach())
    tis = torch.clamp(torch.exp(logp.detach() - batch.behaviour_logp), max=spec.tis_cap)
    per_token = -batch.advantages[:, None] * ratio * tis
    loss = (per_token * batch.loss_mask).sum() / batch.loss_mask.sum()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip or float("inf"))
    optimizer.step()
    updated = {n: p.detach().clone() for n, p in model.named_parameters()}
    return initial, updated, float(norm)


def relative_error(initial, updated, reference) -> float:
    num = sum(((updated[n] - initial[n]) - (reference[n] - initial[n])).pow(2).sum() for n in initial)
    den = sum((reference[n] - initial[n]).pow(2).sum() for n in initial)
    return float((num / den).sqrt())


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_one_step_matches_plain_torch_adamw(tiny_model_dir, groups, zero_stage):
    spec = spec_for(tiny_model_dir, zero_stage=zero_stage)
    initial, reference, reference_norm = reference_step(tiny_model_dir, groups, spec)
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        assert learners.weights().keys() == initial.keys()
        tokens = learners.accumulate(groups, end_of_step=True)
        metrics = learners.step()
        updated = learners.weights()
    finally:
        learners.shutdown()
    assert tokens == sum(len(s.completion_ids) for g in groups for s in g)
    assert metrics["weight_version"] == 1 and metrics["tokens"] == tokens
    assert metrics["grad_norm"] == pytest.approx(reference_norm, rel=1e-3)
    error = relative_error(initial, updated, reference)
    print(f"ZeRO-{zero_stage}: relative error of the update vs plain torch {error:.2e}")
    assert error <= 1e-3


def test_streaming_two_halves_equals_the_whole_step(tiny_model_dir, groups):
    spec = spec_for(tiny_model_dir, zero_stage=3, grad_clip=0.5)
    initial, reference, reference_norm = reference_step(tiny_model_dir, groups, spec)
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        learners.accumulate(groups[:2], end_of_step=False)
        learners.accumulate(groups[2:], end_of_step=True)
        metrics = learners.step()
        updated = learners.weights()
    finally:
        learners.shutdown()
    assert reference_norm > 0.5  # clipping was active, so the norm's scale mattered
    assert metrics["grad_norm"] == pytest.approx(reference_norm, rel=1e-3)
    assert relative_error(initial, updated, reference) <= 1e-3


def _train_step(learners, groups) -> dict:
    learners.accumulate(groups, end_of_step=True)
    return learners.step()


def test_checkpoint_round_trip_continues_exactly_and_exports_to_transformers(tiny_model_dir, groups, tmp_path):
    spec = spec_for(tiny_model_dir, zero_stage=2, warmup_steps=2, lr_schedule="cosine", total_steps=4)
    first, second = groups[:2], groups[2:]
    # Never stopped: two steps in a row.
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    checkpoints = tmp_path / "ckpt"
    try:
        _train_step(learners, first)
        save_checkpoint(learners, checkpoints, {"step": 1, "sampler": {}, "weight_version": 1}, keep=3)
        uninterrupted = _train_step(learners, second)
        expected = learners.weights()
        exported = learners.export_hf(str(tmp_path / "hf"))
        # A save that fails half-way (here rank 1 cannot write its optimizer file, as on a full
        # disk): one line, the half-written folder gone, the checkpoint before it whole.
        (checkpoints / "version-2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").mkdir(parents=True)
        with pytest.raises(RunInterrupted) as failed:
            save_checkpoint(learners, checkpoints, {"step": 2, "sampler": {}, "weight_version": 2}, keep=3)
    finally:
        learners.shutdown()
    assert str(failed.value).startswith(f"the checkpoint could not be written under '{checkpoints}' (")
    assert "\n" not in str(failed.value) and "Is a directory" in str(failed.value)
    assert not (checkpoints / "version-2").exists()
    assert [c.tag for c in complete_checkpoints(checkpoints)] == ["version-1"]
    # Stopped after one step: a fresh group resumes from the checkpoint and takes the second.
    resumed = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        assert resumed.load_checkpoint(str(tmp_path / "ckpt"), "version-1") == 1
        after_resume = _train_step(resumed, second)
        actual = resumed.weights()
        # A damaged optimizer state is one line naming the checkpoint, not a remote traceback.
        for optimizer_state in (tmp_path / "ckpt" / "version-1").glob("*optim_states.pt"):
            optimizer_state.write_bytes(b"garbage")
        with pytest.raises(CheckpointError) as damaged:
            resumed.load_checkpoint(str(tmp_path / "ckpt"), "version-1")
        assert "\n" not in str(damaged.value) and "version-1' cannot be loaded" in str(damaged.value)
    finally:
        resumed.shutdown()
    assert after_resume["weight_version"] == uninterrupted["weight_version"] == 2
    assert after_resume["lr"] == uninterrupted["lr"]  # the scheduler resumed too
    for name in expected:
        assert torch.allclose(actual[name], expected[name], rtol=0, atol=1e-7), name

    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    loaded = dict(model.named_parameters())
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name].detach(), tensor), name


def test_weight_stream_yields_every_parameter_once_with_exact_values(tiny_model_dir, groups, tmp_path):
    # ZeRO-3 with a bucket smaller than one layer: many gathers, each parameter still once.
    spec = spec_for(tiny_model_dir, zero_stage=3)
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        _train_step(learners, groups)
        streams = ray.get([r.collect_weights.remote(64 << 10) for r in learners.ranks], timeout=300)
        exported = learners.export_hf(str(tmp_path / "hf"))
    finally:
        learners.shutdown()
    streamed, other_rank = streams
    assert other_rank == {}  # only rank 0 is the source
    reference = dict(AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).named_parameters())
    assert list(streamed) == list(reference)  # every HF name, once, in model order
    original = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).named_parameters())
    for name, tensor in streamed.items():
        assert tensor.shape == reference[name].shape and torch.equal(tensor, reference[name].detach()), name
    assert any(not torch.equal(streamed[n], original[n].detach()) for n in streamed)  # it did train


def test_kl_to_reference_and_ppo_epochs_run_and_report(tiny_model_dir, groups):
    spec = spec_for(tiny_model_dir, zero_stage=3, kl_coef=0.1, kl_kind="k3", ppo_epochs=2, entropy_coef=0.01,
                    clip_low=0.01, clip_high=0.01)
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        step1 = _train_step(learners, groups)
        step2 = _train_step(learners, groups)
    finally:
        learners.shutdown()
    # Step 1, epoch 2 runs on weights one update past the reference: KL > 0 and ratios move.
    assert step1["weight_version"] == 1 and step2["weight_version"] == 2
    assert step1["kl"] > 0 and step2["kl"] > step1["kl"] * 0.5
    assert step1["clip_frac_low"] + step1["clip_frac_high"] > 0  # tight clip range was hit
    assert step1["ratio_max"] > 1.0 and step1["entropy"] > 0


def test_two_ppo_epochs_match_plain_torch(tiny_model_dir, groups):
    from learner.losses import policy_loss

    spec = spec_for(tiny_model_dir, zero_stage=2, ppo_epochs=2, clip_low=0.05, clip_high=0.05)
    # Reference: epoch 1 on-policy; epoch 2 clips against epoch 1's (pre-update) logprobs.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, eps=spec.adam_eps, weight_decay=spec.weight_decay)
    batch = collate([s for g in groups for s in g], pad_id=model.config.pad_token_id)
    old_logp = None
    for _ in range(2):
        logp = token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                              batch.input_ids)
        old_logp = logp.detach() if old_logp is None else old_logp
        out = policy_loss(logp, old_logp, batch.advantages, batch.loss_mask, behaviour_logp=batch.behaviour_logp,
                          clip_low=0.05, clip_high=0.05, tis_cap=spec.tis_cap)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}

    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        metrics = _train_step(learners, groups)
        updated = learners.weights()
    finally:
        learners.shutdown()
    assert metrics["weight_version"] == 1
    assert metrics["clip_frac_low"] + metrics["clip_frac_high"] > 0  # epoch 2 did clip
    assert relative_error(initial, updated, reference) <= 1e-3


# ---------------------------------------------------------------------------------------
# Non-finite losses, gradients and weights: found before the optimizer, never checkpointed.


def _poisoned(groups, advantage=float("nan")):
    """`groups` with one completion's advantage replaced (what a NaN reward used to cause)."""
    import dataclasses

    first = [dataclasses.replace(groups[0][0], advantage=advantage), *groups[0][1:]]
    return [first, *groups[1:]]


def _nonfinite_gradients_seen(learners) -> list[tuple[int, bool]]:
    """On every rank, before the step: how many gradient tensors it checks, and whether any is
    NaN/inf — so the check is known to look at the ZeRO partitions that really hold them."""
    def probe(self):
        from learner.nonfinite import any_nonfinite, local_gradients

        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        gradients = local_gradients(self.engine, params, self.spec.zero_stage)
        return len(gradients), bool(any_nonfinite(gradients, self.device))

    return ray.get([rank.__ray_call__.remote(probe) for rank in learners.ranks], timeout=300)


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_a_nonfinite_step_is_skipped_and_the_next_step_is_a_clean_first_step(tiny_model_dir, groups, zero_stage):
    spec = spec_for(tiny_model_dir, zero_stage=zero_stage, on_nonfinite="skip")
    initial, reference, _ = reference_step(tiny_model_dir, groups, spec)
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        learners.accumulate(_poisoned(groups), end_of_step=True)
        poisoned_seen = _nonfinite_gradients_seen(learners)
        skipped = learners.step()
        after_skip = learners.weights()
        learners.accumulate(groups, end_of_step=True)
        clean_seen = _nonfinite_gradients_seen(learners)
        clean = learners.step()
        updated = learners.weights()
    finally:
        learners.shutdown()
    assert all(count > 0 and bad for count, bad in poisoned_seen), poisoned_seen
    assert all(count > 0 and not bad for count, bad in clean_seen), clean_seen
    assert skipped["skipped_updates"] == 1 and skipped["weight_version"] == 1
    assert math.isnan(skipped["loss"]) and math.isnan(skipped["grad_norm"])
    assert all(torch.equal(after_skip[name], initial[name]) for name in initial)  # weights untouched
    # Gradients dropped and Adam's moments and step count as before: the next step is exactly
    # plain torch's first step from the initial weights.
    assert clean["skipped_updates"] == 0 and clean["weight_version"] == 2
    assert relative_error(initial, updated, reference) <= 1e-3


def test_a_nonfinite_loss_stops_the_step_with_one_line_before_the_optimizer(tiny_model_dir, groups):
    spec = spec_for(tiny_model_dir, zero_stage=3)  # on_nonfinite = "stop", the recipe's default
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        initial = learners.weights()
        learners.accumulate(_poisoned(groups, float("inf")), end_of_step=True)
        with pytest.raises(RunFailed) as raised:  # the driver's copy of the rank's error is one too
            learners.step()
        after = learners.weights()
    finally:
        learners.shutdown()
    line = str(original_failure(raised.value))
    assert line.startswith("step 1: the loss is ") and "the update was not applied" in line, line
    assert "learner.lr" in line and 'learner.on_nonfinite = "skip"' in line and "\n" not in line
    assert all(torch.equal(after[name], initial[name]) for name in initial)


@pytest.mark.parametrize("zero_stage", [2, 3])  # whole weights on every rank; ZeRO-3's shards
def test_weights_that_overflow_stop_the_run_and_are_never_checkpointed(tiny_model_dir, groups, tmp_path, zero_stage):
    # Finite gradients, but AdamW's first step moves every weight by about lr: 1e308 is inf in fp32.
    spec = spec_for(tiny_model_dir, zero_stage=zero_stage, lr=1e308)
    learners = LearnerGroup(spec, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=300)
    try:
        learners.accumulate(groups, end_of_step=True)
        with pytest.raises(RunFailed) as stopped:
            learners.step()
        with pytest.raises(RunFailed) as refused:  # what the loop would save next: refused
            learners.save_checkpoint(str(tmp_path / "ckpt"))
    finally:
        learners.shutdown()
    assert str(original_failure(stopped.value)) == (
        "step 1: the weights are not finite after the optimizer step (learner.lr = 1e+308); stopped before "
        "they were saved or sent to the rollout workers; lower learner.lr")
    assert "the weights are not finite; no checkpoint was written" in str(original_failure(refused.value))
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").rglob("*"))
