"""How far each training option's gradients are from the reference (`memory: full`, `frozen_backward:
fp32`), parameter by parameter, on one fp32 training step of a preset.

    .venv/bin/python benchmarks/gradient_error.py cast_b16_ek100 [--options bf16,full/bf16,recompute_bf16/bf16]

An option is MEMORY or MEMORY/FROZEN_BACKWARD (`CASTConfig.memory`, `CASTConfig.frozen_backward`).
Every step draws the same drop-path masks and sees the same clip; the trainable parameters are
moved off their initial values first (the zero-initialised up-projections would otherwise hide the
exchange's and the adapters' part of the gradient). Prints one JSON object: per option, the median
and the largest relative error ||g - g_ref|| / ||g_ref|| over the parameters, the parameter where it
is largest, and whether the outputs are the reference's bits. tests/test_memory.py holds the tiny
preset to the tolerances docs/benchmarks.md states; this script gives the figures for a full model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

import torch

from cast_video.benchmark import logits_loss
from cast_video.models import CAST, preset_config
from cast_video.seeds import BENCHMARK_SEED


def step(model: CAST, video: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs and trainable gradients of one step; the same drop-path masks for every option."""
    for _, p in model.trainable_parameters():
        p.grad = None
    torch.manual_seed(BENCHMARK_SEED + 1)
    out = model(video)
    logits_loss(out).backward()
    return {k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in model.trainable_parameters()
                                                     if p.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--options", default="bf16,recompute_bf16,full/bf16,recompute_bf16/bf16")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset_config(args.preset)
    torch.manual_seed(BENCHMARK_SEED)
    model = CAST(cfg).train()
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.02 * torch.randn_like(p))
    video = torch.randn(1, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    ref_out, ref = step(model, video)
    report = {}
    for option in args.options.split(","):
        memory, _, backward = option.partition("/")
        model.config = dataclasses.replace(cfg, memory=memory, frozen_backward=backward or "fp32")
        out, grads = step(model, video)
        errors = {n: ((grads[n] - g).norm() / g.norm()).item() for n, g in ref.items() if g.norm() > 0}
        worst = max(errors, key=errors.get)
        report[option] = {"median": float(f"{statistics.median(errors.values()):.3g}"),
                          "max": float(f"{errors[worst]:.3g}"), "max_at": worst, "parameters": len(errors),
                          "outputs_equal": all(torch.equal(out[k], ref_out[k]) for k in ref_out)}
        print(json.dumps({option: report[option]}), flush=True)
    print(json.dumps({"preset": args.preset, "threads": torch.get_num_threads(), "errors": report}))


if __name__ == "__main__":
    main()
