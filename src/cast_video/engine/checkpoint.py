"""Checkpoints that survive a crash: written to a temporary file, fsynced, then renamed."""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch


def atomic_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """`step_XXXXXXXX.pt` files (the last `keep_last` kept), `best.pt`, and `last.pt` pointing at the
    newest state. Only trainable weights are stored: the frozen experts come from their own files."""

    def __init__(self, directory: str | os.PathLike, keep_last: int = 2):
        self.dir = Path(directory) / "checkpoints"
        self.keep_last = keep_last

    def save(self, state: dict, step: int, best: bool = False) -> Path:
        path = self.dir / f"step_{step:08d}.pt"
        atomic_save(state, path)
        atomic_save(state, self.dir / "last.pt")
        if best:
            atomic_save(state, self.dir / "best.pt")
        for old in self.step_files()[: -self.keep_last]:
            old.unlink()
        return path

    def step_files(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("step_*.pt") if re.fullmatch(r"step_\d+\.pt", p.name))

    def latest(self) -> Path | None:
        last = self.dir / "last.pt"
        return last if last.exists() else None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Our training checkpoints hold RNG states and config data besides tensors; they are our own
    files, so they are loaded with weights_only=False."""
    return torch.load(path, map_location="cpu", weights_only=False)
