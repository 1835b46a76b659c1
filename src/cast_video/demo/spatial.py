"""The demo's spatial expert: a small CLIP-architecture ViT that learns digits from still images.

CLIP never saw videos; neither does this expert. It is trained as an image classifier (a linear head on
its pooled class token) on single frames drawn like the clips' frames (background, noise, distractor,
random pose) from the training digits only. The head is dropped afterwards; CAST keeps the ViT.

It trains on the one engine (`engine/loop.py`) as the recipe `StillPretraining`: AdamW on every weight
with the one-cycle schedule (`engine.optim.OneCycle`), so the stage gets the engine's checkpoints and
exact resume like fine-tuning and VideoMAE pre-training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from ..data import ClipAugment, DataConfig
from ..engine.config import OptimConfig
from ..engine.distributed import DistInfo
from ..engine.loop import Run, train
from ..engine.optim import OneCycle
from ..engine.state import TrainState
from ..files import atomic_write_bytes, atomic_write_json
from ..models.experts import ExpertConfig, ViTExpert
from ..seeds import DEFAULT_SEED
from .config import SpatialPretrainConfig
from .synth import SynthConfig, load_digit_images, render_still, split_images

logger = logging.getLogger(__name__)


def render_stills(split: str, count: int, synth: SynthConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` stills of the split's digit images: uint8 (M, S, S, 3) and labels (M,)."""
    images, labels = load_digit_images()
    pool = split_images(len(images), seed)[split]
    rng = np.random.default_rng([seed, 100 + ["train", "validation", "test"].index(split)])
    picks = rng.choice(pool, size=count)
    stills = np.stack([render_still(images[i], rng, synth) for i in picks])
    return torch.from_numpy(stills), torch.from_numpy(labels[picks])


_NORMALISE = ClipAugment(DataConfig(), {}).eval()  # the clips' normalisation, so stills look like frames


def _as_video(stills: torch.Tensor) -> torch.Tensor:
    """uint8 stills (B, S, S, 3) -> normalised 2-frame videos (B, 3, 2, S, S); the CLIP expert reads frame 1."""
    return _NORMALISE.normalize(stills.permute(0, 3, 1, 2)[:, :, None].expand(-1, -1, 2, -1, -1))


class StillDataset(torch.utils.data.Dataset):
    """Rendered stills as the data layer's sample dicts (`video` is one uint8 still (S, S, 3))."""

    def __init__(self, stills: torch.Tensor, labels: torch.Tensor):
        self.stills, self.labels = stills, labels

    def __len__(self) -> int:
        return len(self.stills)

    def set_epoch(self, epoch: int) -> None:
        """The stills are fixed: drawn once, before training."""

    def __getitem__(self, i: int) -> dict:
        return {"video": self.stills[i], "labels": {"digit": int(self.labels[i])}, "index": i, "id": str(i)}


class StillClassifier(nn.Module):
    """The expert and a linear head on its pooled token: normalised 2-frame videos (B, 3, 2, S, S) -> (B, 10)."""

    def __init__(self, expert_cfg: ExpertConfig, img_size: int):
        super().__init__()
        self.expert = ViTExpert(expert_cfg, num_frames=2, img_size=img_size)
        self.head = nn.Linear(expert_cfg.width, 10)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.expert(video, joint_time=False))


class StillTask(nn.Module):
    """Cross-entropy of the digit of each still (no augmentation: the renderer already varies them)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device

    def loss(self, runner: nn.Module, batch: dict, epoch: int, micro: int) -> torch.Tensor:
        x = _as_video(batch["video"].to(self.device, non_blocking=True))  # (B, 3, 2, S, S)
        return F.cross_entropy(runner(x), batch["labels"]["digit"].to(self.device, non_blocking=True))


@dataclass
class StillRunConfig:
    """The engine's view of the stage: its fields mean what they mean in a `TrainConfig`."""

    expert: ExpertConfig
    img_size: int
    optim: OptimConfig
    output_dir: str
    seed: int = DEFAULT_SEED
    pct_start: float = 0.1  # the one-cycle's rise
    precision: str = "fp32"
    device: str = "auto"
    compile: bool = False
    num_workers: int = 0  # the stills are in memory
    resume: str = "auto"  # an interrupted demo continues the stage exactly
    save_every_steps: int = 0
    keep_last: int = 1
    log_every_steps: int = 10


class StillPretraining:
    """The engine's recipe for the spatial expert (see `engine.loop.Recipe`)."""

    def build_model(self, cfg: StillRunConfig) -> StillClassifier:
        torch.manual_seed(cfg.seed)
        return StillClassifier(cfg.expert, cfg.img_size)

    def precision(self, model: StillClassifier, cfg: StillRunConfig, device: torch.device) -> str:
        return cfg.precision

    def datasets(self, cfg: StillRunConfig, given: dict, model: StillClassifier, main: bool):
        return given["train"], None  # validation is measured once, at the end (`train_spatial_expert`)

    def param_groups(self, model: StillClassifier, cfg: StillRunConfig) -> list[dict]:
        """One group, weight decay on every weight (biases and norms too), as the demo always trained it."""
        return [{"params": list(model.parameters()), "weight_decay": cfg.optim.weight_decay, "lr_scale": 1.0}]

    def schedule(self, cfg: StillRunConfig, world: int, steps_per_epoch: int) -> OneCycle:
        """The peak is `optim.base_lr` itself (no scaling by the batch: the demo tuned it at its batch)."""
        return OneCycle(cfg.optim.epochs * steps_per_epoch, cfg.optim.base_lr, pct_start=cfg.pct_start)

    def task(self, model: StillClassifier, cfg: StillRunConfig, device: torch.device, info: DistInfo) -> StillTask:
        return StillTask(device)

    def finish(self, state: TrainState, run: Run, given: dict) -> dict:
        return {"model": state.model, "losses": list(state.losses)}


def train_spatial_expert(expert_cfg: ExpertConfig, img_size: int, cfg: SpatialPretrainConfig, synth: SynthConfig,
                         seed: int, out_dir: str | Path, progress: bool = True, log=None) -> dict:
    """Train on training stills (the run's checkpoints in out_dir/spatial/), measure on validation stills,
    save `spatial.safetensors` and `spatial_history.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = render_stills("train", cfg.stills, synth, seed)
    x_val, y_val = render_stills("validation", max(200, cfg.stills // 10), synth, seed)
    optim = OptimConfig(base_lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=1.0, epochs=cfg.epochs,
                        warmup_epochs=0.0, batch_size=cfg.batch_size)
    run_cfg = StillRunConfig(expert_cfg, img_size, optim, str(out / "spatial"), seed=seed)
    result = train(run_cfg, progress, {"train": StillDataset(x_train, y_train)}, recipe=StillPretraining())
    model = result["model"]
    acc = _accuracy(model, x_val, y_val)
    history = [{"epoch": e + 1, "loss": loss} for e, loss in enumerate(result["losses"])]
    history[-1]["val_acc"] = acc
    message = f"spatial expert: loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}, " \
              f"validation still accuracy {acc:.1%}"
    (log or logger.info)(message)
    path = out / "spatial.safetensors"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.expert.state_dict().items()}
    atomic_write_bytes(path, save(weights, metadata={"arch": "clip"}))
    atomic_write_json(out / "spatial_history.json", history, indent=1)
    return {"expert": str(path), "val_still_acc": acc, "history": history}


@torch.no_grad()
def _accuracy(model: StillClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = sum((model(_as_video(xb.to(device))).argmax(-1).cpu() == yb).sum().item()
                  for xb, yb in zip(x.split(256), y.split(256), strict=True))
    return correct / len(y)
