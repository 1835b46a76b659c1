"""The demo's spatial expert: a small CLIP-architecture ViT that learns digits from still images.

CLIP never saw videos; neither does this expert. It is trained as an image classifier (a linear head on
its pooled class token) on single frames drawn like the clips' frames (background, noise, distractor,
random pose) from the training digits only. The head is dropped afterwards; CAST keeps the ViT.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from ..data import ClipAugment, DataConfig
from ..files import atomic_write_bytes, atomic_write_json
from ..models.experts import ExpertConfig, ViTExpert
from .config import SpatialPretrainConfig
from .synth import SynthConfig, load_digit_images, render_still, split_images


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


def train_spatial_expert(expert_cfg: ExpertConfig, img_size: int, cfg: SpatialPretrainConfig, synth: SynthConfig,
                         seed: int, out_dir: str | Path, progress: bool = True, log=None) -> dict:
    """Train on training stills, measure on validation stills, save `spatial.safetensors`."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    x_train, y_train = render_stills("train", cfg.stills, synth, seed)
    x_val, y_val = render_stills("validation", max(200, cfg.stills // 10), synth, seed)
    expert = ViTExpert(expert_cfg, num_frames=2, img_size=img_size)
    head = nn.Linear(expert_cfg.width, 10)
    params = list(expert.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(cfg.epochs):
        expert.train()
        order = torch.randperm(len(x_train), generator=gen)
        total, count = 0.0, 0
        bar = tqdm(order.split(cfg.batch_size), desc=f"spatial expert {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for idx in bar:
            logits = head(expert(_as_video(x_train[idx]), joint_time=False))
            loss = F.cross_entropy(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
            bar.set_postfix(loss=f"{total / count:.3f}")
        acc = _accuracy(expert, head, x_val, y_val)
        history.append({"epoch": epoch + 1, "loss": total / count, "val_acc": acc})
        if log is not None:
            log(f"spatial expert epoch {epoch + 1}: loss {total / count:.3f}, validation still accuracy {acc:.1%}")
    path = out / "spatial.safetensors"
    weights = {k: v.contiguous() for k, v in expert.state_dict().items()}
    atomic_write_bytes(path, save(weights, metadata={"arch": "clip"}))
    atomic_write_json(out / "spatial_history.json", history, indent=1)
    return {"expert": str(path), "val_still_acc": history[-1]["val_acc"], "history": history}


@torch.no_grad()
def _accuracy(expert: ViTExpert, head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    expert.eval()
    correct = sum((head(expert(_as_video(xb), joint_time=False)).argmax(-1) == yb).sum().item()
                  for xb, yb in zip(x.split(256), y.split(256), strict=True))
    return correct / len(y)
