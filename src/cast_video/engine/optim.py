"""AdamW with layer-wise learning-rate decay, and the schedules the engine steps once per optimizer step.

A schedule is a frozen dataclass called with the 0-based optimizer step: `schedule(step)` is that step's
learning rate and `schedule.beta1(step)` its AdamW beta1 (None: the optimizer's own). `WarmupCosine` is
the paper's (Table 4) and VideoMAE's; `OneCycle` is the demo's image pre-training of its spatial expert.
`apply_schedule` is the one place that writes them into the optimizer."""

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

    def beta1(self, step: int) -> float | None:
        return None  # AdamW's beta1 stays as configured (optim.betas)


def cos_anneal(start: float, end: float, pct: float) -> float:
    """From `start` at pct 0 to `end` at pct 1 along half a cosine."""
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


@dataclass(frozen=True)
class OneCycle:
    """The one-cycle policy (Smith & Topin 2018) as PyTorch's `OneCycleLR` with its defaults: the lr rises
    along a half cosine from peak / `div_factor` to `peak` over the first `pct_start` of the steps, then
    falls to peak / (`div_factor` x `final_div_factor`) at the last step, while beta1 moves the other way
    (`momentum[1]` -> `momentum[0]` -> `momentum[1]`): high lr with low momentum. Phase 1 ends at step
    pct_start x total - 1, as in PyTorch, so the two give the same lr and beta1 at every step (where
    that end is step 0, PyTorch divides by zero; here step 0 is then the peak)."""

    total_steps: int
    peak: float
    pct_start: float = 0.1
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    momentum: tuple[float, float] = (0.85, 0.95)  # (at the peak lr, at the ends)

    def __post_init__(self):
        if self.total_steps < 1 or not 0.0 <= self.pct_start < 1.0:
            raise ValueError(f"OneCycle needs total_steps >= 1 and pct_start in [0, 1), got {self.total_steps}, "
                             f"{self.pct_start}")

    @property
    def warmup_steps(self) -> int:
        return max(0, math.ceil(self.pct_start * self.total_steps - 1))

    def _phase(self, step: int) -> tuple[float, bool]:
        """(progress in the phase, whether it is the rise) of `step`."""
        rise_end = self.pct_start * self.total_steps - 1
        if rise_end > 0 and step <= rise_end:
            return step / rise_end, True
        return (step - rise_end) / (self.total_steps - 1 - rise_end), False

    def __call__(self, step: int) -> float:
        start = self.peak / self.div_factor
        pct, rising = self._phase(step)
        if rising:
            return cos_anneal(start, self.peak, pct)
        return cos_anneal(self.peak, start / self.final_div_factor, pct)

    def beta1(self, step: int) -> float:
        low, high = self.momentum
        pct, rising = self._phase(step)
        return cos_anneal(high, low, pct) if rising else cos_anneal(low, high, pct)


def apply_schedule(optimizer: torch.optim.Optimizer, schedule, step: int) -> None:
    """Step `step`'s learning rate (times each group's `lr_scale`) and, if the schedule sets it, beta1."""
    set_lr(optimizer, schedule(step))
    beta1 = schedule.beta1(step)
    if beta1 is not None:
        for group in optimizer.param_groups:
            group["betas"] = (beta1, *group["betas"][1:])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
