"""Parameter and FLOP counts the way the paper reports them.

GFLOPs in the paper (and fvcore, which VideoMAE-family papers use) are multiply-accumulates: one
per multiply-add, half of what `torch.utils.flop_counter` reports. The attention matmuls are counted
too, so the math SDPA backend is forced while counting: the fused CPU kernel has no FLOP formula and
would silently drop out. The model is built on the meta device, so counting ViT-B costs no memory.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .cast import CAST, CASTConfig


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}


def count_gmacs(config: CASTConfig) -> float:
    """Multiply-accumulates (in units of 1e9) of one forward pass of one view (batch 1)."""
    with torch.device("meta"):
        model = CAST(config).eval()
        video = torch.empty(1, 3, config.num_frames, config.img_size, config.img_size)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        model(video)
    return counter.get_total_flops() / 2 / 1e9


def model_summary(config: CASTConfig) -> dict[str, float | int]:
    with torch.device("meta"):
        model = CAST(config)
    return {**count_parameters(model), "gflops_per_view": round(count_gmacs(config), 2)}
