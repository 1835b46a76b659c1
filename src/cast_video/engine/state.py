"""`TrainState`: everything a run changes as it trains, and how it is saved and loaded for an exact resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import load_checkpoint, set_rng_state
from .distributed import DistInfo


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes; frozen experts come from their own files."""
    return {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}


@dataclass
class TrainState:
    """The model, its optimizer, loss scaler and schedule, and where the run stands.

    `batch` is the number of micro-batches of `epoch` already consumed; it is always the start of an
    accumulation group, so a run resumed from any checkpoint replays exactly the groups it had left.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Callable[[int], float]  # the learning rate of optimizer step `step`
    step: int = 0  # optimizer steps (accumulation groups) done
    epoch: int = 0
    batch: int = 0
    best: float = -math.inf
    history: list[dict] = field(default_factory=list)
    skipped: int = 0  # groups dropped for a non-finite loss (optim.on_nonfinite: skip)
    skipped_in_a_row: int = 0
    losses: list[float] = field(default_factory=list)  # the mean training loss of each finished epoch
    epoch_loss: float = 0.0  # the sum of this epoch's step losses so far, and their count
    epoch_steps: int = 0

    def state_dict(self, rng: list[dict], config: dict) -> dict:
        """Tensors and plain containers only, so the file loads with weights_only=True. `rng` holds one
        RNG state per process (drop path draws differently on each)."""
        return {"model": trainable_state(self.model), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng, "step": self.step, "epoch": self.epoch,
                "batch": self.batch, "best": self.best, "history": self.history, "skipped": self.skipped,
                "skipped_in_a_row": self.skipped_in_a_row, "losses": self.losses, "epoch_loss": self.epoch_loss,
                "epoch_steps": self.epoch_steps, "config": config}

    def load_state_dict(self, state: dict, info: DistInfo, source: str = "checkpoint") -> None:
        """Restore a `state_dict`; each process takes its own RNG state (one saved by fewer processes
        gives every process rank 0's, which is exact only for the same number of processes)."""
        result = self.model.load_state_dict(state["model"], strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{source}: weights this model does not have: {result.unexpected_keys[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        set_rng_state(rng[info.rank] if len(rng) == info.world else rng[0])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.best, self.history = state["best"], state["history"]
        self.skipped, self.skipped_in_a_row = state.get("skipped", 0), state.get("skipped_in_a_row", 0)
        self.losses = state.get("losses", [])
        self.epoch_loss, self.epoch_steps = state.get("epoch_loss", 0.0), state.get("epoch_steps", 0)

    def end_epoch_loss(self) -> None:
        """Close the epoch's running loss into `losses`."""
        if self.epoch_steps:
            self.losses.append(self.epoch_loss / self.epoch_steps)
        self.epoch_loss, self.epoch_steps = 0.0, 0


def load_trained_weights(model: nn.Module, path: str | Path) -> None:
    """The trained weights of a training checkpoint into `model` (built from the run's config)."""
    result = model.load_state_dict(load_checkpoint(path)["model"], strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: weights this model does not have: {result.unexpected_keys[:5]}")
