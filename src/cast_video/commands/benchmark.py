"""`cast-video benchmark PRESET`: clips/s, ms/step, peak memory, GMACs per view and MFU."""

from __future__ import annotations

import dataclasses
import json

from ..models import PRESETS
from ..models.cast import FROZEN_BACKWARDS, MEMORY_MODES
from ..precision import PRECISIONS


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="measure speed and memory of a preset",
                       description="Warm-up steps, then timed steps, of a preset with random weights. "
                                   "Measure one setting per process: see docs/benchmarks.md.")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--mode", choices=["infer", "train"], default="infer",
                   help="train: forward, backward and an AdamW step over the trainable parameters")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast dtype; auto: bf16 where it is faster than fp32 (see docs/benchmarks.md)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--attention", choices=["sdpa", "math"], default="sdpa",
                   help="sdpa: the fastest kernel PyTorch has for the device; math: the reference path")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--memory", choices=MEMORY_MODES,
                   help="what training keeps for backward (CASTConfig.memory; default: the preset's)")
    p.add_argument("--frozen-backward", choices=FROZEN_BACKWARDS,
                   help="precision of the gradient carried back through the frozen experts in training "
                        "(CASTConfig.frozen_backward; default: the preset's)")
    p.add_argument("--gemm", action="store_true",
                   help="also measure this machine's fp32 and bf16 GEMM rates and the step's bound at that rate")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's, one per core)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--peak-tflops", type=float, help="the device's bf16 peak for MFU, if it is not in the table")
    p.add_argument("--runtime", choices=["torch", "onnxruntime"], default="torch",
                   help="onnxruntime: export to ONNX first (not timed), then time fp32 inference in onnxruntime")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..benchmark import GEMM_SIZE, run_benchmark

    r = run_benchmark(args.preset, args.mode, args.batch, args.precision, args.attention, args.compile,
                      args.grad_checkpointing, args.steps, args.warmup, args.device, args.threads, args.peak_tflops,
                      runtime=args.runtime, memory=args.memory, gemm=args.gemm,
                      frozen_backward=args.frozen_backward)
    if args.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"{r.preset} {r.mode}, batch {r.batch}, {r.precision}, attention {r.attention}"
          f"{', compiled' if r.compile else ''}{', grad checkpointing' if r.grad_checkpointing else ''}"
          f"{_backward(r)} on {r.device} ({r.threads} threads), PyTorch {r.torch_version}"
          + (f", onnxruntime (exported in {r.export_seconds} s)" if r.runtime == "onnxruntime" else ""))
    print(f"  precision {r.precision}: {r.precision_reason}")
    print(f"  {r.ms_per_step:.1f} ms/step, {r.clips_per_s:.3f} clips/s")
    print(f"  peak memory {r.peak_memory_gb:.3f} GB ({r.memory_kind})")
    if r.memory_kind != "cuda max allocated":
        print(f"  CPU busy {r.cpu_busy:.2f} (CPU time / wall time / threads; well below 1: another process competed)")
    print(f"  {r.gmacs_per_view:.4g} GMACs per view, {r.gflops_per_step:.4g} GFLOPs per step")
    if r.gemm_gflops is not None:
        rates = ", ".join(f"{k} {v:.0f}" for k, v in r.gemm_gflops.items())
        print(f"  GEMM {rates} GFLOP/s ({GEMM_SIZE}^3); bound {r.bound_ms:.1f} ms/step at the {r.precision} rate, "
              f"measured {r.time_to_bound:.2f}x the bound")
    if r.mfu is not None:
        print(f"  MFU {100 * r.mfu:.1f}% of {r.peak_tflops:.0f} TFLOP/s (dense bf16 peak)")
    else:
        print("  MFU: n/a (no GPU with a known bf16 peak; pass --peak-tflops)")
    return 0


def _backward(r) -> str:
    """What the training step keeps and computes for backward; nothing for inference, which keeps nothing."""
    if r.mode != "train":
        return ""
    unused = r.frozen_backward != "fp32" and r.precision != "fp32"
    return f", memory {r.memory}, frozen backward {r.frozen_backward}" + \
        (f" (not used under {r.precision} autocast)" if unused else "")
