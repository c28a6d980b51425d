"""Learner on CUDA in bf16: checks for every ZeRO stage, then throughput against plain torch.

Builds a tiny Qwen2 locally, then for ZeRO stages 0-3 constructs aha's learner rank (the
plain class, world size 1, no Ray) on `cuda` in bf16 and:
  - runs a few GRPO steps on one fixed synthetic batch: every loss, gradient norm and
    updated weight must be finite, the loss must move, and every stage must follow the same
    loss path (ZeRO-0 in bf16 once drifted from the others: see learner.deepspeed_quirks.forget_warmup_step);
  - streams the weights out (learner/weights.py): every Hugging Face parameter name once,
    with its full shape, matching `weight_manifest`;
  - times the steps. The baseline is plain torch in this process: the same model in bf16,
    the same loss over the same micro-batches, forward/backward/clip/`torch.optim.AdamW`.
Then the KL reference, entropy bonus, two PPO epochs and gradient checkpointing are run for
ZeRO-0 and ZeRO-3 (the two ways the reference is built) and must stay finite, and a checkpoint
save/load and a Hugging Face export must give back the weights exactly.
Prints tokens/s of each and the ratio aha / plain torch (target: >= 0.8, docs/benchmarks.md).

    python3 bench/learner_gpu.py [--hidden 512 --layers 8 --steps 5 --stages 0,1,2,3]

Exits 2 with a one-line reason when there is no CUDA device, 1 when a check fails.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and `bench/learner.py` would
# shadow the `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def _load_cpu_bench():
    """bench/learner.py, the CPU twin of this script: its batch and its plain-torch baseline."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("aha_bench_learner", Path(__file__).with_name("learner.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cpu_bench = _load_cpu_bench()
make_batch, plain_torch_tokens_per_s, synchronize = (
    _cpu_bench.make_batch, _cpu_bench.plain_torch_tokens_per_s, _cpu_bench.synchronize)


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def peak_memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# -- aha's learner ----------------------------------------------------------------------------


def build_learner(spec):
    from learner.learner import Learner, free_port

    learner = Learner(spec, rank=0, world_size=1)
    info = learner.setup("127.0.0.1", free_port())  # the process group is made once, then reused
    return learner, info


def release(learner) -> None:
    for engine in (learner.engine, getattr(learner, "reference", None)):
        if hasattr(engine, "destroy"):
            engine.destroy()
    learner.engine = learner.reference = None


def check_weight_stream(learner, expected: dict[str, torch.Size], initial: dict[str, torch.Tensor],
                        dtype: torch.dtype) -> int:
    """Every HF parameter once, full shape, finite, in `weight_manifest` order; some moved. Returns count."""
    manifest = learner.weight_manifest()
    seen, moved = [], 0
    # A small bucket, so ZeRO-3 gathers in several rounds.
    for name, tensor in learner.iter_weights(bucket_bytes=4 << 20):
        check(name in expected, f"weight stream: unexpected name {name}")
        check(name not in seen, f"weight stream: {name} twice")
        check(tensor.shape == expected[name], f"weight stream: {name} has shape {tuple(tensor.shape)}, "
                                              f"expected {tuple(expected[name])}")
        check(tensor.dtype == dtype, f"weight stream: {name} is {tensor.dtype}, expected {dtype}")
        check(bool(torch.isfinite(tensor).all()), f"weight stream: {name} is not finite")
        moved += not torch.equal(tensor.cpu(), initial[name])
        seen.append(name)
    check(set(seen) == set(expected), f"weight stream: missing {sorted(set(expected) - set(seen))[:3]}")
    check([m.name for m in manifest] == seen, "weight stream order differs from weight_manifest")
    check(all(tuple(m.shape) == tuple(expected[m.name]) for m in manifest), "weight_manifest shapes are wrong")
    check(moved > 0, "no parameter changed after the steps")
    return len(seen)


def run_stage(spec, sequences, args, expected, initial, dtype) -> dict:
    """Checks and timing of the learner for one ZeRO stage."""
    learner, info = build_learner(spec)
    device = learner.device
    check(device.type == args.device, f"ZeRO-{spec.zero_stage}: learner chose {device}, expected {args.device}")
    check(learner.dtype == dtype, f"ZeRO-{spec.zero_stage}: learner chose {learner.dtype}, expected {dtype}")
    losses, norms = [], []
    for _ in range(args.check_steps):  # also the warm-up of the timed steps
        learner.accumulate(sequences, end_of_step=True)
        metrics = learner.step()
        losses.append(metrics["loss"])
        norms.append(metrics["grad_norm"])
    check(all(math.isfinite(v) for v in losses + norms), f"ZeRO-{spec.zero_stage}: non-finite loss/grad norm "
                                                          f"{losses} {norms}")
    check(len(set(losses)) > 1, f"ZeRO-{spec.zero_stage}: the loss did not move: {losses}")
    check(all(n > 0 for n in norms), f"ZeRO-{spec.zero_stage}: zero gradient norm {norms}")
    streamed = check_weight_stream(learner, expected, initial, dtype)

    synchronize(device)
    tokens, start = 0, time.perf_counter()
    for _ in range(args.steps):
        tokens += learner.accumulate(sequences, end_of_step=True)
        learner.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    release(learner)
    return {"tokens_per_s": tokens / seconds, "losses": losses, "grad_norms": norms, "streamed": streamed,
            "device": info["device"]}


def check_extras(spec, sequences, directory: str) -> list[float]:
    """KL reference, entropy bonus, 2 PPO epochs, gradient checkpointing: two finite steps;
    then a checkpoint saved, a step taken, the checkpoint loaded back, and a Hugging Face export."""
    from transformers import AutoModelForCausalLM

    learner, _ = build_learner(replace(spec, kl_coef=0.05, entropy_coef=0.01, ppo_epochs=2,
                                       gradient_checkpointing=True))
    values, what = [], f"ZeRO-{spec.zero_stage} extras"
    for _ in range(2):
        learner.accumulate(sequences, end_of_step=True)
        metrics = learner.step()
        values += [metrics["loss"], metrics["grad_norm"], metrics.get("kl", 0.0), metrics.get("entropy", 0.0)]
    check(all(math.isfinite(v) for v in values), f"{what}: not finite: {values}")
    learner.save_checkpoint(f"{directory}/checkpoints")
    saved = learner.collect_weights()
    learner.accumulate(sequences[:spec.micro_batch_size], end_of_step=True)
    learner.step()
    check(learner.load_checkpoint(f"{directory}/checkpoints", "version-2") == 2, f"{what}: wrong weight version after load")
    loaded = learner.collect_weights()
    check(all(torch.equal(saved[n], loaded[n]) for n in saved), f"{what}: loaded weights differ from saved")
    exported = AutoModelForCausalLM.from_pretrained(learner.export_hf(f"{directory}/export"),
                                                    dtype=getattr(torch, spec.dtype))
    check(all(torch.equal(saved[n], p.detach()) for n, p in exported.named_parameters()),
          f"{what}: exported weights differ")
    release(learner)
    return values


def stages_disagree(losses: dict[int, list[float]], tolerance: float = 0.1) -> list[str]:
    """The stages train the same model on the same batch: their losses must follow one path,
    within `tolerance` of how far the loss moved (bf16 sums differ a little between stages)."""
    if len(losses) < 2:
        return []
    first, *others = losses
    scale = abs(losses[first][-1] - losses[first][0])
    worst = {s: max(abs(a - b) for a, b in zip(losses[s], losses[first])) for s in others}
    print(f"loss paths vs ZeRO-{first}: max difference "
          + "  ".join(f"ZeRO-{s} {d:.2e}" for s, d in worst.items()) + f"  (loss moved {scale:.2e})")
    return [f"ZeRO-{s}: loss path differs from ZeRO-{first} by {d:.2e} (loss moved {scale:.2e})"
            for s, d in worst.items() if d > tolerance * scale]


# -- main -----------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--completion-len", type=int, default=384)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--check-steps", type=int, default=3, help="checked steps (also the warm-up)")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--no-extras", action="store_true", help="skip the KL/entropy/PPO-epochs check")
    # For a dry run of the logic without a GPU; the numbers then mean nothing.
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    return parser.parse_args()


def attempt(what: str, fn, failures: list[str]):
    """fn(), or None with the failure recorded: every stage is reported before the script fails."""
    try:
        return fn()
    except Exception as error:
        traceback.print_exc()
        failures.append(f"{what}: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}")
        print(f"{what}: FAILED {failures[-1]}", flush=True)
        return None


def main() -> int:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("learner_gpu: CUDA is not available (torch.cuda.is_available() is False); this benchmark needs a GPU",
              file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM

    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec
    from cluster.recipe import Recipe
    from cluster.recipe.schema import TinyModelConfig
    from cluster.startup.specs import learner_spec

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    stages = [int(s) for s in args.stages.split(",")]
    results, failures = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(f"{tmp}/model", tiny_model_spec(TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers), Recipe().rollout.max_model_len))
        initial = dict(AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).named_parameters())
        expected = {n: p.shape for n, p in initial.items()}
        sequences = make_batch(args.sequences, args.prompt_len, args.completion_len, vocab=250)
        base = replace(learner_spec(Recipe(), str(model_dir)), device=args.device, dtype=args.dtype, lr=args.lr,
                       grad_clip=1.0, micro_batch_size=args.micro_batch, tis_cap=2.0)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"device {name}; torch {torch.__version__}; dtype {args.dtype}; model hidden={args.hidden} "
              f"layers={args.layers} ({sum(p.numel() for p in initial.values()) / 1e6:.1f}M parameters); "
              f"{args.sequences} sequences x ({args.prompt_len} prompt + {args.completion_len} completion) "
              f"tokens per step, micro-batch {args.micro_batch}", flush=True)

        reset_peak_memory(device)
        baseline = plain_torch_tokens_per_s(model_dir, sequences, args.micro_batch, args.steps, args.lr,
                                            device=device, dtype=dtype)
        print(f"plain torch forward/backward/AdamW ({args.dtype} weights): {baseline:10.0f} tokens/s  "
              f"peak {peak_memory_gib(device):.2f} GiB", flush=True)
        for stage in stages:
            reset_peak_memory(device)
            result = attempt(f"aha learner ZeRO-{stage}", lambda: run_stage(
                replace(base, zero_stage=stage), sequences, args, expected, initial, dtype), failures)
            if result is not None:
                results[stage] = result
                print(f"aha learner ZeRO-{stage} ({result['device']}): {result['tokens_per_s']:10.0f} tokens/s  "
                      f"ratio {result['tokens_per_s'] / baseline:.2f}  peak {peak_memory_gib(device):.2f} GiB  "
                      f"losses {[round(v, 5) for v in result['losses']]}  grad norms "
                      f"{[round(v, 4) for v in result['grad_norms']]}  streamed {result['streamed']} tensors",
                      flush=True)
        for stage in ([] if args.no_extras else [s for s in (0, 3) if s in stages]):
            values = attempt(f"extras ZeRO-{stage}", lambda: check_extras(
                replace(base, zero_stage=stage), sequences, f"{tmp}/zero{stage}"), failures)
            if values is not None:
                print(f"extras ZeRO-{stage} (kl, entropy, 2 PPO epochs, checkpointing): finite; checkpoint and "
                      f"export give the weights back; [loss, grad_norm, kl, entropy] x 2 = "
                      f"{[round(v, 5) for v in values]}", flush=True)

    failures += stages_disagree({s: r["losses"] for s, r in results.items()})
    print("ratio aha / plain torch (target >= 0.8): "
          + "  ".join(f"ZeRO-{s} {r['tokens_per_s'] / baseline:.2f}" for s, r in results.items()))
    if failures:
        print(f"learner_gpu: {len(failures)} check(s) failed: " + "; ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
