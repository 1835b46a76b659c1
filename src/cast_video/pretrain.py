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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config_utils import ConfigError, to_dict
from .data import DataConfig, build_dataset, build_gpu_augment
from .engine.config import OptimConfig
from .engine.distributed import DistInfo, barrier
from .engine.loop import Run, build_schedule, stream_seed, train
from .engine.state import TrainState
from .files import atomic_write_bytes
from .models.experts import ExpertBlock, ExpertConfig, ViTExpert
from .models.layers import sinusoid_table, trunc_normal_init
from .precision import PRECISIONS, autocast, resolve_precision
from .seeds import DEFAULT_SEED


@dataclass
class PretrainConfig:
    """One pre-training run. `data` is the data layer's config: any annotated format, or
    `format: unlabeled` with `train:` a folder of videos; labels are ignored. As in VideoMAE, the only
    augmentations are the random resized crop and the flip; RandAugment, colour jitter, erasing and
    mixup are switched off whatever `data` says.

    It runs on the training engine (`engine/loop.py`, recipe `Pretraining`): `batch_size` is per process,
    the peak lr is `lr` x total batch / 256 (total = batch_size x processes x update_freq), and device,
    precision, resume, checkpoints and logging mean what they mean in a `TrainConfig`."""

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
    batch_size: int = 32  # per process
    update_freq: int = 1  # gradient accumulation
    lr: float = 1.5e-4  # per 256 clips, scaled linearly with the total batch as in MAE
    min_lr: float = 1e-6  # per 256 clips too
    warmup_lr: float = 0.0  # per 256 clips: the warm-up's first lr
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None
    num_workers: int = 4
    seed: int = DEFAULT_SEED
    output_dir: str = "runs/pretrain"
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more compute
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # as TrainConfig.precision
    compile: bool = False
    resume: str = "auto"  # "auto": continue the run in output_dir if there is one; "" fresh; or a checkpoint path
    save_every_steps: int = 0  # 0 = at the end of every epoch only
    keep_last: int = 2
    log_every_steps: int = 10
    on_nonfinite: str = "stop"  # as optim.on_nonfinite of a TrainConfig

    def __post_init__(self):
        if self.expert.arch != "videomae":
            raise ValueError(f"pre-training is for the VideoMAE expert; expert.arch is {self.expert.arch!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        self.optim  # noqa: B018 -- validates update_freq and on_nonfinite now, not at the first step

    @property
    def optim(self) -> OptimConfig:
        """The engine's view of the optimisation fields (no layer decay: every weight trains)."""
        return OptimConfig(base_lr=self.lr, min_lr=self.min_lr, warmup_lr=self.warmup_lr,
                           weight_decay=self.weight_decay, betas=self.betas, layer_decay=1.0, epochs=self.epochs,
                           warmup_epochs=self.warmup_epochs, batch_size=self.batch_size, update_freq=self.update_freq,
                           clip_grad=self.clip_grad, on_nonfinite=self.on_nonfinite)


def num_masked(num_patches: int, ratio: float) -> int:
    """Masked patches per time step: floor(ratio * N) as VideoMAE, robust to 0.29 * 100 = 28.999..."""
    return min(num_patches - 1, math.floor(ratio * num_patches + 1e-6))


def tube_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random spatial mask per clip, shared by every time step: (B, N) bool, True where masked.

    Each row masks exactly `num_masked(N, ratio)` patches.
    """
    return _lowest(torch.rand(batch, num_patches, generator=generator), ratio)  # (B, N)


def sample_tube_mask(keys: torch.Tensor, epoch: int, seed: int, num_patches: int, ratio: float) -> torch.Tensor:
    """`tube_mask` with each clip's draw keyed by (seed, epoch, its dataset index): (B, N) bool on the CPU.

    A clip gets the same mask whichever rank, micro-batch or resumed run sees it, so N processes mask
    as 1 process with the same global batch does."""
    scores = torch.stack([torch.rand(num_patches, generator=torch.Generator().manual_seed(stream_seed(seed, epoch, k)))
                          for k in keys.tolist()])  # (B, N)
    return _lowest(scores, ratio)


def _lowest(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """True at the `num_masked` lowest scores of each row (B, N)."""
    ranks = scores.argsort(dim=1).argsort(dim=1)  # (B, N): rank of each patch's score
    return ranks < num_masked(scores.shape[1], ratio)


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


class PretrainTask(nn.Module):
    """VideoMAE's step for the engine: the crop/flip augmentation and a tube mask per clip, both keyed by
    (seed, epoch, dataset index), and the reconstruction loss of the masked tubes."""

    def __init__(self, augment: nn.Module, num_patches: int, ratio: float, precision: str, device: torch.device,
                 seed: int):
        super().__init__()
        self.augment, self.precision, self.device, self.seed = augment, precision, device, seed
        self.num_patches, self.ratio = num_patches, ratio

    def loss(self, runner: nn.Module, batch: dict, epoch: int, micro: int) -> torch.Tensor:
        video = batch["video"].to(self.device, non_blocking=True)
        keys = batch["index"].to(self.device, non_blocking=True)
        x, _ = self.augment(video, keys=keys, epoch=epoch)  # uint8 crops -> flipped, normalised
        mask = sample_tube_mask(batch["index"], epoch, self.seed, self.num_patches, self.ratio)
        with autocast(self.precision, self.device):
            return runner(x, mask.to(self.device, non_blocking=True))


def param_groups(model: MaskedVideoAutoencoder, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not biases, norms or the mask token), as MAE; no layer decay."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n != "mask_token"]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n == "mask_token"]
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]


class Pretraining:
    """The engine's recipe for VideoMAE pre-training (see `engine.loop.Recipe`)."""

    def build_model(self, cfg: PretrainConfig) -> MaskedVideoAutoencoder:
        torch.manual_seed(cfg.seed)  # identical fresh weights on every rank
        return MaskedVideoAutoencoder(cfg)

    def precision(self, model: MaskedVideoAutoencoder, cfg: PretrainConfig, device: torch.device) -> str:
        return resolve_precision(cfg.precision, device)[0]  # every weight trains: nothing to store in bf16

    def datasets(self, cfg: PretrainConfig, given: dict, model: MaskedVideoAutoencoder, main: bool):
        if "train" in given:
            return given["train"], None
        data_cfg = pretrain_data(cfg)
        if not data_cfg.train:
            raise ConfigError("data.train: the pre-training config names no videos (a folder, or an annotation file)")
        return build_dataset(data_cfg, "train", seed=cfg.seed), None

    def param_groups(self, model: MaskedVideoAutoencoder, cfg: PretrainConfig) -> list[dict]:
        return param_groups(model, cfg.weight_decay)

    def schedule(self, cfg: PretrainConfig, world: int, steps_per_epoch: int):
        return build_schedule(cfg, world, steps_per_epoch)  # warm-up + cosine, lr x total batch / 256

    def task(self, model: MaskedVideoAutoencoder, cfg: PretrainConfig, device: torch.device,
             info: DistInfo) -> PretrainTask:
        augment = build_gpu_augment(pretrain_data(cfg), {}, seed=cfg.seed).to(device)
        return PretrainTask(augment, model.encoder.num_patches, cfg.mask_ratio, cfg.precision, device, cfg.seed)

    def finish(self, state: TrainState, run: Run, given: dict) -> dict:
        """`expert.safetensors`: the encoder in `ViTExpert` names, ready for CAST's temporal expert."""
        cfg = run.cfg
        path = Path(cfg.output_dir) / "expert.safetensors"
        if run.info.main:
            tensors = {k: v.detach().cpu().contiguous() for k, v in state.model.encoder.state_dict().items()}
            atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"arch": "videomae",
                                                                          "config": json.dumps(to_dict(cfg.expert))}))
        barrier(run.info)
        return {"loss": list(state.losses), "expert": str(path), "checkpoint": str(run.ckpt.latest())}


def pretrain(cfg: PretrainConfig, dataset=None, progress: bool = True) -> dict:
    """Pre-train on the engine (resuming the run in `output_dir` when `resume: auto`, the default).

    Writes `expert.safetensors`, the engine's `checkpoints/` and `log.jsonl`. `dataset` replaces the one
    `cfg.data` describes (the demo's decoded clips). Returns the mean loss per epoch and the paths.
    Under torchrun every process calls it; each trains on its share of every global batch.
    """
    return train(cfg, progress, {"train": dataset} if dataset is not None else None, recipe=Pretraining())


def load_expert_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The encoder weights written by `pretrain`, for `CAST.temporal.load_state_dict`."""
    from safetensors.torch import load_file

    return load_file(str(path))
