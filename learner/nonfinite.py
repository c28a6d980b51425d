"""Non-finite losses, gradients and weights on a learner rank: found before they do harm.

A NaN or inf that reaches the optimizer spreads into every weight, the weight broadcast and
the next checkpoint. Each rank tests only its own share (the ZeRO partition of the
gradients, its shard of the weights) with two reductions per tensor, and the ranks agree by
all-reducing the flags, so every rank takes the same branch of a collective step.
"""

from __future__ import annotations

import torch


def _has_inf_or_nan(tensor: torch.Tensor) -> torch.Tensor:
    """DeepSpeed's own overflow test: max/min reductions, no mask as large as the tensor."""
    from deepspeed.runtime.utils import has_inf_or_nan

    return has_inf_or_nan(tensor)


def local_gradients(engine, params: list, zero_stage: int) -> list[torch.Tensor]:
    """This rank's gradients as the optimizer will read them.

    Without ZeRO they are the parameters' (whole, already all-reduced); under ZeRO 1-3 they
    are this rank's partition, where DeepSpeed's overflow check reads them too
    (`averaged_gradients`: views of the flat buffers the optimizer steps on).
    """
    if zero_stage == 0:
        return [p.grad for p in params if p.grad is not None]
    groups = engine.optimizer.averaged_gradients.values()
    return [g for group in groups if group is not None for g in group if g is not None and g.numel()]


def local_weights(params: list) -> list[torch.Tensor]:
    """This rank's weights: whole parameters, or its ZeRO-3 shard (`ds_tensor`)."""
    return [getattr(p, "ds_tensor", p).detach() for p in params]


def any_nonfinite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0/1 float flag on `device`: whether any of `tensors` holds a NaN or an inf."""
    flag = torch.zeros((), dtype=torch.float32, device=device)
    for tensor in tensors:
        flag = torch.maximum(flag, _has_inf_or_nan(tensor).to(device=device, dtype=torch.float32))
    return flag


def agreed_flags(*flags: torch.Tensor | bool) -> list[bool]:
    """Each flag OR-ed over all ranks (one all-reduce), so every rank decides alike."""
    import torch.distributed as dist

    device = next((f.device for f in flags if isinstance(f, torch.Tensor)), torch.device("cpu"))
    stacked = torch.stack([torch.as_tensor(f, dtype=torch.float32, device=device).reshape(()) for f in flags])
    dist.all_reduce(stacked, op=dist.ReduceOp.MAX)
    return [bool(v) for v in stacked.tolist()]


def inner_optimizer(engine) -> torch.optim.Optimizer:
    """The torch optimizer holding the Adam moments (inside DeepSpeed's ZeRO or bf16 wrapper)."""
    optimizer = engine.optimizer
    return optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer.optimizer


def skip_update(engine, gradients: list[torch.Tensor]) -> None:
    """Let DeepSpeed take its step with the gradients dropped and nothing else changed.

    DeepSpeed has no public way to throw a step's gradients away, so it takes the step with
    zero gradients and a learning rate of 0 (weights unchanged exactly: AdamW moves a weight by
    lr times finite terms) and the Adam moments and step count are put back as they were. The
    step still clears DeepSpeed's gradient buffers and advances the schedule, like any step.
    """
    optimizer = inner_optimizer(engine)
    saved = {param: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
             for param, state in optimizer.state.items()}
    for gradient in gradients:
        gradient.zero_()
    for group in optimizer.param_groups:
        group["lr"] = 0.0  # the scheduler sets it again as the step ends
    engine.step()
    for param, state in optimizer.state.items():
        before = saved.get(param)
        for key, value in state.items():
            if not torch.is_tensor(value):
                state[key] = before[key] if before else value
            elif before is None:
                value.zero_()  # created by this step: zero moments and step count are a fresh start
            else:
                value.copy_(before[key])  # in place: DeepSpeed keeps views of these tensors
