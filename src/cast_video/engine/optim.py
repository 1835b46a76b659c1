"""AdamW with layer-wise learning-rate decay and the warm-up + cosine schedule, per optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models import CAST
from .config import OptimConfig


def param_groups(model: CAST, cfg: OptimConfig) -> list[dict]:
    """One group per (layer, decay?) pair. Layer i of depth L gets lr scale decay^(L+1-i): block i
    of both experts and both B-CAST directions share it; heads and final norms train at full rate.
    Biases, norms and position embeddings get no weight decay."""
    depth = model.config.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.trainable_parameters():
        layer = model.layer_id(name)
        no_wd = model.no_weight_decay(name, p)
        group = groups.setdefault((layer, no_wd), {
            "params": [], "names": [], "lr_scale": cfg.layer_decay ** (depth + 1 - layer),
            "weight_decay": 0.0 if no_wd else cfg.weight_decay,
        })
        group["params"].append(p)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: CAST, cfg: OptimConfig, fused: bool = False, groups: list[dict] | None = None
                    ) -> torch.optim.AdamW:
    """AdamW over `groups` (each with its `lr_scale` and `weight_decay`; default `param_groups(model)`,
    pre-training passes `pretrain.param_groups`); `fused` (one kernel for all parameters) on CUDA."""
    groups = param_groups(model, cfg) if groups is None else groups
    return torch.optim.AdamW(groups, lr=cfg.base_lr, betas=tuple(cfg.betas), fused=fused or None)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float, start: float) -> float:
    """Linear warm-up from `start` to `peak`, then cosine decay to `floor` at `total_steps`."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class WarmupCosine:
    """`lr_at` as the schedule of a run: the learning rate of optimizer step `step` (0-based)."""

    total_steps: int
    warmup_steps: int
    peak: float
    floor: float
    start: float

    def __call__(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.peak, self.floor, self.start)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
