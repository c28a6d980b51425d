"""What DeepSpeed does beyond what the learner asks of it, undone: the optimizer step its bf16
wrapper takes at build time without ZeRO, and the shared-memory op it compiles for tensor-parallel
inference when the process group starts on CPU. Each is a version-specific detail of DeepSpeed
0.19, kept here so the learner reads as the learner.
"""

from __future__ import annotations

import torch


def forget_warmup_step(optimizer) -> None:
    """Undo the step DeepSpeed's bf16 wrapper without ZeRO takes when it is built.

    With bf16 and ZeRO stage 0 DeepSpeed wraps the optimizer in FP16_UnfusedOptimizer, which
    runs one AdamW step on zero gradients to create its state: Adam's step count then starts
    at 1 (the first real update comes out 0.74x as large as on ZeRO-1/2/3) and weight decay
    is applied once. Put the fp32 masters back to the (exact) bf16 weights and drop the state.
    """
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return
    with torch.no_grad():
        for masters, weights in zip(optimizer.fp32_groups, optimizer.fp16_groups):
            for master, weight in zip(masters, weights):
                master.copy_(weight)
    optimizer.optimizer.state.clear()  # torch's AdamW creates its state again on the first step


def without_inference_shm_op() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce when the process group starts.

    On CPU, DeepSpeed's communication backend builds that op with gcc in `init_distributed`: 54 s
    on 2 cores the first time in a virtualenv (measured; after that a 0.1 s load).
    Only `inference_all_reduce`, used by DeepSpeed's tensor-parallel inference, calls it, and it
    falls back to the process group's all-reduce without it; ZeRO training never calls it. On GPU
    there is no such op to build, so this changes nothing there.
    """
    import importlib

    # Not `import deepspeed.comm.torch as ...`: that reads `deepspeed.comm.torch`, which is torch.
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None
