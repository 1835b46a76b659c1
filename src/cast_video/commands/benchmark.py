"""`cast-video benchmark PRESET`: clips/s, ms/step, peak memory, GMACs per view and MFU."""

from __future__ import annotations

import dataclasses
import json

from ..models import PRESETS


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="measure speed and memory of a preset")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--attention", choices=["sdpa", "math"], default="sdpa",
                   help="sdpa: the fastest kernel PyTorch has for the device; math: the reference path")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute block activations in backward")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..benchmark import run_benchmark

    r = run_benchmark(args.preset, args.mode, args.batch, args.precision, args.attention, args.compile,
                      args.grad_checkpointing, args.steps, args.warmup, args.device)
    if args.json:
        print(json.dumps(dataclasses.asdict(r)))
        return 0
    print(f"{r.preset} {r.mode}, batch {r.batch}, {r.precision}, attention {r.attention}"
          f"{', compiled' if r.compile else ''}{', grad checkpointing' if r.grad_checkpointing else ''}"
          f" on {r.device} ({r.threads} threads)")
    print(f"  {r.ms_per_step:.1f} ms/step, {r.clips_per_s:.2f} clips/s")
    print(f"  peak memory {r.peak_memory_gb:.2f} GB ({r.memory_kind})")
    print(f"  {r.gmacs_per_view:.4g} GMACs per view" + (f", MFU {100 * r.mfu:.1f}% of {r.peak_tflops:.0f} TFLOP/s"
                                                          if r.mfu is not None else ""))
    return 0
