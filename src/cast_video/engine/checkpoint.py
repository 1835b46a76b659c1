"""Training checkpoints: written once per save, linked as `last.pt` / `best.pt`, read with weights_only.

A checkpoint of ours holds tensors and plain containers only (dicts, lists, tuples, numbers, strings):
the RNG states are stored as tensors and tuples, the config and the history as dicts. So every one loads
with `torch.load(weights_only=True)`, and a file that needs anything more (a pickle that would build
arbitrary objects, i.e. run code) is refused with a one-line `CheckpointError` naming it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_open, atomic_write
from ..weights.io import refusal


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint written by the engine, loaded so that it cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on pickle protocols; the error names what matters
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError beyond tensors and containers, RuntimeError for non-torch files
            raise CheckpointError(refusal(path, err, "")) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a cast-video training checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) RNG states as tensors and tuples."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # keys: (624,) uint32
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _link(source: Path, target: Path) -> None:
    """Make `target` the same file as `source` (a hard link, or a copy where links fail), atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links
        tmp.unlink(missing_ok=True)
        with open(source, "rb") as src, atomic_open(target) as dst:
            shutil.copyfileobj(src, dst)
        return
    os.replace(tmp, target)


class CheckpointManager:
    """`step_XXXXXXXX.pt` files (the last `keep_last` kept), `best.pt`, and `last.pt`, the newest state.

    A state is serialised once, into its step file; `last.pt` and `best.pt` are hard links to it (copies
    where the file system has no links), so a save costs one write whatever it is also named. Only
    trainable weights are stored: the frozen experts come from their own files.
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 2):
        self.dir = Path(directory) / "checkpoints"
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.dir / f"step_{step:08d}.pt"

    def save(self, state: dict, step: int, best: bool = False) -> Path:
        path = self.path(step)
        save_checkpoint(state, path)
        _link(path, self.dir / "last.pt")
        if best:
            _link(path, self.dir / "best.pt")
        for old in self.step_files()[: -self.keep_last]:
            old.unlink()
        return path

    def step_files(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("step_*.pt") if re.fullmatch(r"step_\d+\.pt", p.name))

    def latest(self) -> Path | None:
        last = self.dir / "last.pt"
        return last if last.exists() else None
