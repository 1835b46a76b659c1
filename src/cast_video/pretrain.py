"""VideoMAE self-supervised pre-training of a temporal expert on unlabeled videos.

CAST's temporal expert is a VideoMAE encoder, and the paper pre-trained it on EK100 itself before
fine-tuning: a masked autoencoder sees 10% of the space-time tubes of a clip and reconstructs the
pixels of the other 90%. Tube masking (one spatial mask shared by every time step) stops the model from
copying a patch from its neighbour in time, so it has to model motion; normalising each target patch
by its own mean and variance makes it reconstruct edges and texture rather than colour.

The encoder is our `ViTExpert(arch="videomae")`, so its weights load straight into CAST; the decoder is
a few narrow transformer blocks that are thrown away afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import save
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config_utils import ConfigError, to_dict
from .data import DataConfig, build_dataset, build_gpu_augment, collate
from .engine.checkpoint import load_checkpoint, save_checkpoint
from .files import atomic_write_bytes, atomic_write_json
from .models.experts import ExpertBlock, ExpertConfig, ViTExpert
from .models.layers import sinusoid_table, trunc_normal_init
from .seeds import DEFAULT_SEED


@dataclass
class PretrainConfig:
    """One pre-training run. `data` is the data layer's config: any annotated format, or
    `format: unlabeled` with `train:` a folder of videos; labels are ignored. As in VideoMAE, the only
    augmentations are the random resized crop and the flip; RandAugment, colour jitter, erasing and
    mixup are switched off whatever `data` says."""

    expert: ExpertConfig = field(default_factory=lambda: ExpertConfig(arch="videomae"))
    num_frames: int = 16
    img_size: int = 224
    mask_ratio: float = 0.9
    norm_pix_loss: bool = True
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    data: DataConfig = field(default_factory=lambda: DataConfig(format="unlabeled", sampling="dense", frame_stride=4))
    epochs: int = 800
    warmup_epochs: int = 40
    batch_size: int = 32
    lr: float = 1.5e-4  # per 256 clips, scaled linearly with the batch size as in MAE
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    num_workers: int = 4
    seed: int = DEFAULT_SEED
    output_dir: str = "runs/pretrain"
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more compute

    def __post_init__(self):
        if self.expert.arch != "videomae":
            raise ValueError(f"pre-training is for the VideoMAE expert; expert.arch is {self.expert.arch!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")


def num_masked(num_patches: int, ratio: float) -> int:
    """Masked patches per time step: floor(ratio * N) as VideoMAE, robust to 0.29 * 100 = 28.999..."""
    return min(num_patches - 1, math.floor(ratio * num_patches + 1e-6))


def tube_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random spatial mask per clip, shared by every time step: (B, N) bool, True where masked.

    Each row masks exactly `num_masked(N, ratio)` patches.
    """
    scores = torch.rand(batch, num_patches, generator=generator)  # (B, N)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, N): rank of each patch's score
    return ranks < num_masked(num_patches, ratio)


def patchify(video: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, 3, 2T, H, W) -> (B, T, N, tubelet*patch*patch, 3), tokens ordered as the expert's."""
    return rearrange(video, "b c (t p0) (h p1) (w p2) -> b t (h w) (p0 p1 p2) c", p0=tubelet, p1=patch, p2=patch)


class MaskedVideoAutoencoder(nn.Module):
    """The VideoMAE encoder (a `ViTExpert`) on visible tubes, and a light decoder for all of them."""

    def __init__(self, cfg: PretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ViTExpert(cfg.expert, cfg.num_frames, cfg.img_size)
        steps, patches = self.encoder.num_steps, self.encoder.num_patches
        dec = ExpertConfig(arch="videomae", width=cfg.decoder_width, depth=cfg.decoder_depth,
                           heads=cfg.decoder_heads, patch_size=cfg.expert.patch_size)
        self.encoder_to_decoder = nn.Linear(cfg.expert.width, dec.width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(dec.width))
        table = sinusoid_table(steps * patches, dec.width).view(steps, patches, dec.width)  # (T, N, Dd)
        self.register_buffer("decoder_pos", table, persistent=False)
        self.decoder_blocks = nn.ModuleList(ExpertBlock(dec) for _ in range(dec.depth))
        self.decoder_norm = nn.LayerNorm(dec.width, eps=dec.ln_eps)
        self.pixels_per_token = cfg.expert.tubelet_size * cfg.expert.patch_size**2 * 3
        self.head = nn.Linear(dec.width, self.pixels_per_token)
        for module in (self.encoder_to_decoder, self.decoder_blocks, self.decoder_norm, self.head):
            module.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruction loss of a normalised clip (B, 3, 2T, H, W) under a tube mask (B, N)."""
        x = self.encoder.embed(video)  # (B, T, N, D)
        b, t, n, d = x.shape
        visible = (~mask).nonzero()[:, 1].view(b, -1)  # (B, Nv): indices of the kept patches
        idx = visible[:, None, :, None]  # (B, 1, Nv, 1)
        x = x.gather(2, idx.expand(b, t, -1, d))  # (B, T, Nv, D)
        for block in self.encoder.blocks:
            x = self._block(block, x)
        x = self.encoder_to_decoder(self.encoder.norm(x))  # (B, T, Nv, Dd)
        dd = x.shape[-1]
        full = self.mask_token.to(x.dtype).expand(b, t, n, dd).scatter(2, idx.expand(b, t, -1, dd), x)  # (B, T, N, Dd)
        y = full + self.decoder_pos.to(x.dtype)
        for block in self.decoder_blocks:
            y = self._block(block, y)
        pred = self.head(self.decoder_norm(y))  # (B, T, N, P*3)

        target = patchify(video, self.cfg.expert.tubelet_size, self.cfg.expert.patch_size)  # (B, T, N, P, 3)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-2, keepdim=True)
            std = target.var(dim=-2, unbiased=True, keepdim=True).sqrt()
            target = (target - mean) / (std + 1e-6)
        target = rearrange(target, "b t n p c -> b t n (p c)")  # (B, T, N, P*3)
        per_token = (pred.float() - target.float()).pow(2).mean(-1)  # (B, T, N)
        weight = mask[:, None, :].expand_as(per_token).float()  # loss on masked tubes only
        return (per_token * weight).sum() / weight.sum()


    def _block(self, block: ExpertBlock, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.grad_checkpointing and self.training:
            return checkpoint(block, x, True, use_reentrant=False)  # joint_time=True
        return block(x, joint_time=True)


def pretrain_data(cfg: PretrainConfig) -> DataConfig:
    """The data config with VideoMAE's pre-training augmentation: crop and flip only."""
    return dataclasses.replace(cfg.data, num_frames=cfg.num_frames, input_size=cfg.img_size, rand_augment="",
                               color_jitter=0.0, random_erasing=0.0, mixup=0.0, cutmix=0.0)


def _cosine_lr(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * progress))


def pretrain(cfg: PretrainConfig, dataset=None, progress: bool = True) -> dict:
    """Pre-train, resuming from `output_dir/checkpoint.pt` if a run was interrupted.

    Writes `expert.safetensors` (the encoder, in `ViTExpert` names, ready for CAST's temporal expert),
    `checkpoint.pt` (model, optimiser, epoch) after every epoch and `log.jsonl`. Returns the loss per
    epoch and the paths.
    """
    from tqdm import tqdm

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    data_cfg = pretrain_data(cfg)
    if dataset is None:
        if not data_cfg.train:
            raise ConfigError("data.train: the pre-training config names no videos (a folder, or an annotation file)")
        dataset = build_dataset(data_cfg, "train", seed=cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=len(dataset) >= cfg.batch_size,
        num_workers=cfg.num_workers, generator=torch.Generator().manual_seed(cfg.seed), collate_fn=collate,
    )
    augment = build_gpu_augment(data_cfg, {}).train()
    model = MaskedVideoAutoencoder(cfg)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n != "mask_token"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n == "mask_token"]
    lr = cfg.lr * cfg.batch_size / 256
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=cfg.betas)
    history: list[float] = []
    start = 0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)  # weights_only: a file that would run code is refused
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]
    atomic_write_json(out / "config.json", to_dict(cfg))
    mask_gen = torch.Generator().manual_seed(cfg.seed + 1 + start)
    steps_per_epoch = len(loader)
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    num_patches = model.encoder.num_patches
    for epoch in range(start, cfg.epochs):
        model.train()
        t0, running, count = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"pretrain {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for i, batch in enumerate(bar):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * steps_per_epoch + i)
            video, _ = augment(batch["video"], generator=gen)  # uint8 crops -> flipped, normalised
            for group in optimizer.param_groups:
                group["lr"] = _cosine_lr(epoch * steps_per_epoch + i, total, warmup, lr, cfg.min_lr)
            mask = tube_mask(video.shape[0], num_patches, cfg.mask_ratio, mask_gen)
            loss = model(video, mask)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pre-training loss is {loss.item()} at epoch {epoch + 1}, step {i}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * video.shape[0]
            count += video.shape[0]
            bar.set_postfix(loss=f"{running / count:.4f}")
        history.append(running / count)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps({"epoch": epoch + 1, "loss": history[-1], "seconds": round(time.time() - t0, 2)}) + "\n")
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                      "history": history}, ckpt_path)
    expert_path = out / "expert.safetensors"
    atomic_write_bytes(expert_path, save({k: v.contiguous() for k, v in model.encoder.state_dict().items()},
                                         metadata={"arch": "videomae", "config": json.dumps(to_dict(cfg.expert))}))
    return {"loss": history, "expert": str(expert_path), "checkpoint": str(ckpt_path)}


def load_expert_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder weights written by `pretrain`, for `CAST.temporal.load_state_dict`."""
    from safetensors.torch import load_file

    return load_file(str(path))
