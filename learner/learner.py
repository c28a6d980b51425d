"""One rank of the DeepSpeed ZeRO learner group.

A plain class; the driver launches R of them as Ray actors that together form one DeepSpeed
job (rank environment set here, no `deepspeed` launcher). Groups stream in: every call to
`accumulate` runs forward/backward at once on the sequences it is given, and `step` applies
the optimizer once the step's groups are all in.

Exact aggregation while streaming: each micro-batch backpropagates the *numerator* of its
loss (e.g. the sum of per-token losses for token-mean) and records the denominator (its token
count). Only at `step` is the step's total denominator known; the accumulated gradients are
then scaled by 1/total before clipping and the optimizer, which gives exactly the gradient of
the whole-step loss.
"""

from __future__ import annotations

import math
import os
import socket
import time
from datetime import timedelta

import torch

from cluster.wire.errors import RunFailed
from cluster.wire.phases import PhaseClock
from cluster.wire.weights import WEIGHT_BUCKET_BYTES, TensorMeta
from learner.batching import MicroBatch, TrainSequence, empty_micro_batch, micro_batches, token_logprobs
from learner.deepspeed_quirks import forget_warmup_step, without_inference_shm_op
from learner.losses import LossOutput, MetricTotals, metric_means, metric_totals
from learner.objectives import Forward, objective_named
from learner.sft_loss import sft_loss
from learner.nonfinite import agreed_flags, any_nonfinite, local_gradients, local_weights, skip_update
from learner.optim import deepspeed_config, lr_multiplier
from learner.spec import LearnerSpec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def resolve_device_and_dtype(spec: LearnerSpec) -> tuple[torch.device, torch.dtype]:
    """fp32 on CPU, bf16 on GPU, unless the spec names them."""
    cuda = torch.cuda.is_available() if spec.device == "auto" else spec.device == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    name = spec.dtype if spec.dtype != "auto" else ("bfloat16" if cuda else "float32")
    return device, getattr(torch, name)


def _grad_norm(params) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


class Learner:
    """A learner rank: policy (and optional frozen reference) under DeepSpeed ZeRO."""

    def __init__(self, spec: LearnerSpec, rank: int, world_size: int):
        self.spec, self.rank, self.world_size = spec, rank, world_size
        self.objective = objective_named(spec.objective)  # an unknown name fails here, not mid-run
        self.weight_version = 0
        self.engine = None
        self._outputs: list[LossOutput] = []
        self._kept: list[MicroBatch] = []  # the step's micro-batches, for ppo_epochs > 1
        self._busy_s, self._calls = 0.0, 0  # forward/backward seconds and calls so far this step

    # -- set-up -------------------------------------------------------------------------

    def pid(self) -> int:
        """This rank's process id: a liveness probe, and what fault injection (cluster/run/chaos.py) kills."""
        return os.getpid()

    def probe_storage(self, marker: str, expected: str) -> str:
        """Read the driver's `marker` file and write this rank's copy beside it (`<marker>.rank<R>`):
        whether the run directory is the same storage here as on the driver. '' or why not."""
        where = f"learner rank {self.rank} on {socket.gethostname()}"
        try:
            with open(marker, encoding="utf-8") as file:
                if file.read() != expected:
                    return f"{where} reads other content in '{marker}'"
            with open(f"{marker}.rank{self.rank}", "w", encoding="utf-8") as file:
                file.write(expected)
        except OSError as err:
            return f"{where} cannot use '{marker}' ({err.strerror})"
        return ""

    def rendezvous_address(self) -> tuple[str, int]:
        """Called on rank 0: an address and free port where the process group meets."""
        try:
            import ray

            host = ray.util.get_node_ip_address()
        except Exception:  # not inside Ray (a test building the class directly)
            host = "127.0.0.1"
        return host, free_port()

    def setup(self, master_addr: str, master_port: int) -> dict:
        """Join the process group and build the DeepSpeed engine(s). Collective: all ranks.
        Returns this rank's device and dtype, and in `setup_s` the seconds of each part."""
        clock = PhaseClock()
        import deepspeed
        from transformers import AutoModelForCausalLM

        clock.lap("imports")  # DeepSpeed and transformers, the first time this process needs them
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        self.device, self.dtype = resolve_device_and_dtype(self.spec)
        if self.device.type == "cpu" and self.spec.cpu_threads > 0:
            torch.set_num_threads(self.spec.cpu_threads)
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        without_inference_shm_op()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                   timeout=timedelta(seconds=self.spec.timeout_s))
        clock.lap("process_group")  # waits for every rank to arrive
        torch.manual_seed(self.spec.seed)
        model = AutoModelForCausalLM.from_pretrained(self.spec.model_path, dtype=self.dtype)
        clock.lap("model")
        if self.spec.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        self.hf_config = model.config
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.spec.lr, betas=tuple(self.spec.adam_betas),
                                      eps=self.spec.adam_eps, weight_decay=self.spec.weight_decay)
        config = deepspeed_config(zero_stage=self.spec.zero_stage, micro_batch_size=self.spec.micro_batch_size,
                                  grad_clip=self.spec.grad_clip, bf16=self.dtype == torch.bfloat16)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, lr_scheduler=self._make_scheduler)
        forget_warmup_step(self.engine.optimizer)
        clock.lap("deepspeed")
        wants_reference = self.spec.kl_coef > 0 and self.objective.uses_reference
        self.reference = self._build_reference(deepspeed, AutoModelForCausalLM) if wants_reference else None
        clock.lap("reference")
        return {"rank": self.rank, "device": str(self.device), "dtype": str(self.dtype), "setup_s": clock.phases}

    def _make_scheduler(self, optimizer):
        spec = self.spec
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(
            step, warmup_steps=spec.warmup_steps, total_steps=spec.total_steps, schedule=spec.lr_schedule))

    def _build_reference(self, deepspeed, auto_model):
        """A frozen copy of the initial policy, sharded like it under ZeRO-3."""
        model = auto_model.from_pretrained(self.spec.model_path, dtype=self.dtype).eval()
        model.requires_grad_(False)
        if self.spec.zero_stage != 3:
            return model.to(self.device)
        config = deepspeed_config(zero_stage=3, micro_batch_size=self.spec.micro_batch_size,
                                  grad_clip=0.0, bf16=self.dtype == torch.bfloat16)
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()  # DeepSpeedEngine.eval() returns None, not the engine
        return engine

    # -- training -------------------------------------------------------------------------

    def _micro_batches(self, sequences: list[TrainSequence], min_micro_batches: int) -> list[MicroBatch]:
        """The learner's layout of `sequences` (learner/batching.py), topped up with empty
        micro-batches to `min_micro_batches`: under ZeRO every rank runs as many."""
        spec = self.spec
        batches = micro_batches(sequences, spec.micro_batch_size, self.pad_id, packing=spec.packing,
                                pack_length=spec.pack_length)
        return batches + [empty_micro_batch(self.pad_id) for _ in range(min_micro_batches - len(batches))]

    def accumulate(self, sequences: list[TrainSequence], end_of_step: bool, min_micro_batches: int = 0) -> int:
        """Forward/backward on `sequences` now; `end_of_step` marks the step's last call.

        Collective under ZeRO: every rank must make the same calls with the same number of
        micro-batches (the group passes the most any rank has as `min_micro_batches`). Returns
        the number of target tokens processed.
        """
        started = time.perf_counter()
        batches = self._micro_batches(sequences, min_micro_batches)
        tokens = 0
        for index, batch in enumerate(batches):
            batch = batch.to(self.device)
            boundary = end_of_step and index == len(batches) - 1
            output, logp = self._forward_backward(batch, boundary)
            self._outputs.append(output)
            if self.spec.ppo_epochs > 1:
                batch.old_logp = logp  # the pre-update logprobs later epochs clip against
                self._kept.append(batch)
            tokens += batch.num_tokens
        self._busy_s += time.perf_counter() - started
        self._calls += 1
        return tokens

    def _forward_backward(self, batch: MicroBatch, boundary: bool):
        self.engine.set_gradient_accumulation_boundary(boundary)
        logits = self.engine(**batch.model_inputs()).logits
        logp = token_logprobs(logits, batch.input_ids)
        ref_logp = self._reference_logp(batch) if self.objective.uses_reference else None
        output = self.objective.loss(Forward(batch, logits, logp, ref_logp), self.spec)
        self.engine.backward(output.numerator, scale_wrt_gas=False)
        output.numerator = output.numerator.detach()
        return output, logp.detach()

    def held_out_nll(self, sequences: list[TrainSequence], min_micro_batches: int = 0) -> dict:
        """The token NLL of `sequences` under the current weights, no update; collective (every
        rank runs as many forwards). Returns {"nll_sum", "tokens"} summed over every rank."""
        import torch.distributed as dist

        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.engine.eval()
        try:
            with torch.no_grad():
                for batch in self._micro_batches(sequences, min_micro_batches):
                    batch = batch.to(self.device)
                    logp = token_logprobs(self.engine(**batch.model_inputs()).logits, batch.input_ids)
                    output = sft_loss(logp, batch.loss_mask)
                    totals += torch.tensor([float(output.numerator), float(output.denominator)],
                                           dtype=torch.float64, device=self.device)
        finally:
            self.engine.train()
        dist.all_reduce(totals)
        return {"nll_sum": totals[0].item(), "tokens": int(totals[1].item())}

    def _reference_logp(self, batch: MicroBatch) -> torch.Tensor | None:
        if self.reference is None:
            return None
        with torch.no_grad():
            logits = self.reference(**batch.model_inputs()).logits
            return token_logprobs(logits, batch.input_ids)

    def step(self) -> dict:
        """Apply the optimizer to the step's accumulated gradients (ppo_epochs updates).

        Collective: every rank calls it after its last `accumulate(..., end_of_step=True)`.
        Returns the step's metrics, aggregated over all ranks.
        """
        import torch.distributed as dist

        started = time.perf_counter()
        # Collectives run on the rank's device: NCCL has no CPU tensors, gloo takes CPU ones.
        denominator = torch.stack([o.denominator.float().to(self.device) for o in self._outputs]).sum().reshape(1)
        dist.all_reduce(denominator)  # the whole step's normaliser, over every rank
        metrics = self._optimizer_step(denominator.item(), epoch=1)
        skipped = metrics["skipped_updates"]
        for epoch in range(2, self.spec.ppo_epochs + 1):
            self._outputs = []
            for index, batch in enumerate(self._kept):
                output, _ = self._forward_backward(batch, boundary=index == len(self._kept) - 1)
                self._outputs.append(output)
            metrics = self._optimizer_step(denominator.item(), epoch=epoch)
            skipped += metrics["skipped_updates"]
        self._kept = []
        # A skipped step still counts as a version: the driver's step and version stay one.
        self.weight_version += 1
        # This rank's compute time in the step (forward/backward, then the update), for the
        # driver's overhead and idle accounting: the driver only sees how long it waited.
        busy = {"accumulate_s": self._busy_s, "accumulate_calls": self._calls,
                "update_s": time.perf_counter() - started}
        self._busy_s, self._calls = 0.0, 0
        return {**metrics, **busy, "skipped_updates": skipped, "weight_version": self.weight_version}

    def _optimizer_step(self, denominator: float, epoch: int) -> dict:
        from deepspeed.utils import safe_update_full_grad_vectorized

        # DeepSpeed averaged the gradients over ranks; undo that and divide by the total.
        scale = self.world_size / denominator if denominator > 0 else 0.0
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        safe_update_full_grad_vectorized(params, lambda grad, _param: grad * scale)
        metrics = self._reduced_metrics()
        lr = self.scheduler.get_last_lr()[0]
        metrics.update(lr=lr, loss=metrics["loss_numerator"] / denominator if denominator > 0 else 0.0)
        self._outputs = []
        # Before the optimizer sees them: a NaN loss or gradient would spread into every weight.
        gradients = local_gradients(self.engine, params, self.spec.zero_stage)
        bad_loss, bad_gradients = agreed_flags(not math.isfinite(metrics["loss"]),
                                               any_nonfinite(gradients, self.device))
        if bad_loss or bad_gradients:
            self._refuse_or_skip("loss" if bad_loss else "gradients", metrics["loss"], epoch, lr)
            skip_update(self.engine, gradients)
            return {**metrics, "grad_norm": float("nan"), "skipped_updates": 1}
        # Without ZeRO, DeepSpeed keeps no norm; the gradients are whole (all-reduced) here.
        norm_before = _grad_norm(params) if self.spec.zero_stage == 0 else None
        self.engine.step()
        grad_norm = norm_before if norm_before is not None else self.engine.get_global_grad_norm()
        # Finite gradients times a huge learning rate still overflow: such weights can only stop the run.
        if agreed_flags(any_nonfinite(local_weights(params), self.device))[0]:
            raise RunFailed(f"{self._step_name(epoch)}: the weights are not finite after the optimizer step "
                            f"(learner.lr = {lr:g}); stopped before they were saved or sent to the rollout "
                            "workers; lower learner.lr")
        return {**metrics, "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "skipped_updates": 0}

    def _refuse_or_skip(self, quantity: str, loss: float, epoch: int, lr: float) -> None:
        """Stop the run with one line naming the step and what to do, unless the recipe skips such steps."""
        if self.spec.on_nonfinite == "skip":
            return
        found = f"the loss is {loss}" if quantity == "loss" else "some gradients are NaN or inf"
        raise RunFailed(f"{self._step_name(epoch)}: {found}; the update was not applied and nothing of it is "
                        f"saved; lower learner.lr (now {lr:g}), look for NaN/inf in the rewards, or set "
                        'learner.on_nonfinite = "skip" to skip such steps')

    def _step_name(self, epoch: int) -> str:
        step = f"step {self.weight_version + 1}"
        return f"{step} (PPO epoch {epoch} of {self.spec.ppo_epochs})" if self.spec.ppo_epochs > 1 else step

    def _reduced_metrics(self) -> dict:
        """The step's loss metrics over every rank's micro-batches (`learner.losses.metric_means`
        of the totals summed, and maximised, over ranks)."""
        import torch.distributed as dist

        names = (self.objective.sum_metrics, self.objective.max_metrics)
        local = metric_totals(self._outputs, *names)
        sums = torch.tensor([*local.sums, local.num_tokens, local.numerator], dtype=torch.float64, device=self.device)
        maxima = torch.tensor(local.maxima, dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        dist.all_reduce(maxima, op=dist.ReduceOp.MAX)
        *metric_sums, tokens, numerator = sums.tolist()
        totals = MetricTotals(sums=metric_sums, maxima=maxima.tolist(), num_tokens=tokens, numerator=numerator)
        return {**metric_means(totals, *names), "tokens": int(tokens), "loss_numerator": numerator}

    # -- weights out, checkpoints ---------------------------------------------------------

    def iter_weights(self, bucket_bytes: int = WEIGHT_BUCKET_BYTES):
        """(hf_name, tensor) for every parameter, on rank 0; other ranks take part, yield nothing.

        Under ZeRO-3 parameters are gathered one bucket at a time, so peak memory stays near
        one bucket. A yielded tensor is valid until the next item is requested.
        """
        from learner.weights import iter_gathered

        yield from iter_gathered(self.engine.module, zero3=self.spec.zero_stage == 3,
                                 is_source=self.rank == 0, bucket_bytes=bucket_bytes)

    def collect_weights(self, bucket_bytes: int = WEIGHT_BUCKET_BYTES) -> dict[str, torch.Tensor]:
        """All weights as a dict of CPU copies on rank 0 ({} elsewhere); for tests and export."""
        return {name: t.detach().to("cpu", copy=True) for name, t in self.iter_weights(bucket_bytes)}

    def weight_manifest(self) -> list[TensorMeta]:
        """Name, dtype and full shape of every tensor `iter_weights` yields, in that order."""
        from learner.weights import manifest_of

        return manifest_of(self.engine.module.named_parameters(), zero3=self.spec.zero_stage == 3)

    def open_weight_group(self, port: int, world_size: int) -> None:
        """Rank 0: host the weight group on `port`; returns once every rollout worker joined."""
        from learner.weight_broadcast import WeightSender

        host, _ = self.rendezvous_address()
        self._sender = WeightSender(host, port, world_size, timeout_s=self.spec.timeout_s, device=self.device)

    def broadcast_weights(self, bucket_bytes: int = WEIGHT_BUCKET_BYTES) -> int:
        """Send the current weights to the rollout workers; collective over learner ranks
        (ZeRO-3 gathers), rank 0 sends. Returns the bytes sent (0 on other ranks)."""
        tensors = self.iter_weights(bucket_bytes)
        if self.rank != 0:
            for _ in tensors:  # take part in the gathers
                pass
            return 0
        return self._sender.send(tensors, self.weight_manifest(), bucket_bytes)

    def save_checkpoint(self, directory: str) -> str:
        """Save the training state; collective. Non-finite weights are refused on every rank
        alike: a NaN checkpoint would poison every run resumed or exported from it."""
        from learner.checkpoint import save_checkpoint

        params = list(self.engine.module.parameters())
        if agreed_flags(any_nonfinite(local_weights(params), self.device))[0]:
            raise RunFailed(f"version {self.weight_version}: the weights are not finite; no checkpoint was "
                            f"written to '{directory}'; lower learner.lr")
        return save_checkpoint(self, directory)

    def load_checkpoint(self, directory: str, tag: str) -> int:
        from learner.checkpoint import load_checkpoint

        return load_checkpoint(self, directory, tag)

    def export_hf(self, directory: str, tokenizer_source: str = "") -> str | None:
        from learner.checkpoint import export_hf

        return export_hf(self, directory, tokenizer_source)
