"""The two frozen experts: a CLIP-style image ViT and a VideoMAE-style video ViT.

Both keep their tokens in one layout, (B, T, L, D): T time steps (frames for CLIP, 2-frame tubes for
VideoMAE), L tokens per step (1 class token + N patches for CLIP, N patches for VideoMAE). The role
an expert plays decides only how attention groups those tokens: the spatial role attends within a
time step ((B*T, L, D)), the temporal role over all of space-time ((B, T*L, D)). That is what lets
Table 1(h) put either architecture in either role.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..normalization import PIXEL_STATS
from .layers import Mlp, SelfAttention, sinusoid_table, trunc_normal_init

ARCHS = ("clip", "videomae")


@dataclass
class ExpertConfig:
    """One expert ViT. `arch` fixes the conventions that pretrained weights depend on:

    clip: Conv2d patches without bias on every second frame (frames 1, 3, 5, ...), class token,
      learned position embedding, ln_pre, QuickGELU, q/k/v biases, LayerNorm eps 1e-5.
    videomae: Conv3d tubelets (tubelet_size x patch x patch) with bias, fixed sine-cosine table over
      space-time, GELU, q and v biases only, LayerNorm eps 1e-6.
    """

    arch: str = "clip"
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    norm: str | None = None  # pixel statistics this expert expects (PIXEL_STATS); None: the model's input_norm

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"expert arch must be one of {ARCHS}, got {self.arch!r}")
        if self.norm is not None and self.norm not in PIXEL_STATS:
            raise ValueError(f"expert norm must be one of {tuple(PIXEL_STATS)} or null, got {self.norm!r}")

    @property
    def has_class_token(self) -> bool:
        return self.arch == "clip"

    @property
    def ln_eps(self) -> float:
        return 1e-5 if self.arch == "clip" else 1e-6


class ExpertBlock(nn.Module):
    """A frozen pre-LN transformer block; CAST calls its parts one by one (eq. 3 and 5)."""

    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.attn = SelfAttention(cfg.width, cfg.heads, qkv_bias="qkv" if cfg.arch == "clip" else "qv")
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio), "quick_gelu" if cfg.arch == "clip" else "gelu")

    def attention(self, x: torch.Tensor, joint_time: bool) -> torch.Tensor:
        """MHSA(LN(x)) for x of shape (B, T, L, D): within each time step, or over all of space-time."""
        b, t = x.shape[:2]
        pattern = "b t l d -> b (t l) d" if joint_time else "b t l d -> (b t) l d"
        y = self.attn(rearrange(self.norm1(x), pattern))  # (B, T*L, D) or (B*T, L, D)
        back = "b (t l) d -> b t l d" if joint_time else "(b t) l d -> b t l d"
        return rearrange(y, back, b=b, t=t)  # (B, T, L, D)

    def forward(self, x: torch.Tensor, joint_time: bool) -> torch.Tensor:
        x = x + self.attention(x, joint_time)
        return x + self.mlp(self.norm2(x))


class ViTExpert(nn.Module):
    """An expert on its own: embedding, blocks and the final norm that CAST fine-tunes.

    `norm` is CLIP's ln_post (applied to the mean of the frame class tokens) or VideoMAE's fc_norm
    (applied to the mean of all tokens), the pooling the official CAST model uses for each.
    """

    def __init__(self, cfg: ExpertConfig, num_frames: int, img_size: int, input_norm: str = "imagenet"):
        super().__init__()
        if img_size % cfg.patch_size:
            raise ValueError(f"image size {img_size} is not divisible by patch size {cfg.patch_size}")
        if num_frames % 2:
            raise ValueError(f"CAST takes an even number of frames (2T), got {num_frames}")
        self.cfg = cfg
        self.grid = img_size // cfg.patch_size
        self.num_patches = self.grid * self.grid  # N
        self.num_steps = num_frames // 2  # T: every second frame for CLIP, 2-frame tubes for VideoMAE
        d = cfg.width
        if cfg.arch == "clip":
            self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, bias=False)
            self.class_embedding = nn.Parameter(torch.zeros(d))
            self.pos_embed = nn.Parameter(torch.zeros(self.num_patches + 1, d))  # (1+N, D)
            self.ln_pre = nn.LayerNorm(d, eps=cfg.ln_eps)
        else:
            if num_frames % cfg.tubelet_size or num_frames // cfg.tubelet_size != self.num_steps:
                raise ValueError("the temporal expert's tubelet size must be 2 so that its tubes align "
                                 f"with the spatial expert's frames (got {cfg.tubelet_size})")
            kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
            self.patch_embed = nn.Conv3d(3, d, kernel, kernel)
            table = sinusoid_table(self.num_steps * self.num_patches, d)  # (T*N, D)
            self.register_buffer("pos_embed", table, persistent=False)
        self.blocks = nn.ModuleList(ExpertBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.renorm = cfg.norm is not None and cfg.norm != input_norm
        if self.renorm:
            # x normalised with (m_in, s_in) -> (x * s_in + m_in - m) / s: the same pixels under this
            # expert's own statistics (m, s), exactly, with one multiply-add per value.
            (m_in, s_in), (m, s) = (torch.tensor(PIXEL_STATS[n]).view(2, 3, 1, 1, 1) for n in (input_norm, cfg.norm))
            self.register_buffer("pixel_scale", s_in / s, persistent=False)  # (3, 1, 1, 1)
            self.register_buffer("pixel_shift", (m_in - m) / s, persistent=False)
        self.init_weights()

    @property
    def num_prefix(self) -> int:
        return 1 if self.cfg.has_class_token else 0

    def init_weights(self) -> None:
        """Random init for tests and from-scratch pre-training; real use loads pretrained weights."""
        self.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)
        if self.cfg.arch == "clip":
            scale = self.cfg.width**-0.5
            nn.init.normal_(self.class_embedding, std=scale)
            nn.init.normal_(self.pos_embed, std=scale)
        else:
            nn.init.zeros_(self.patch_embed.bias)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 2T, H, W) normalised video -> tokens (B, T, L, D)."""
        b = video.shape[0]
        if self.renorm:
            video = video * self.pixel_scale.to(video.dtype) + self.pixel_shift.to(video.dtype)  # (B, 3, 2T, H, W)
        if self.cfg.arch == "clip":
            frames = rearrange(video[:, :, 1::2], "b c t h w -> (b t) c h w")  # (B*T, 3, H, W)
            x = rearrange(self.patch_embed(frames), "bt d h w -> bt (h w) d")  # (B*T, N, D)
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B*T, 1, D)
            x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # (B*T, 1+N, D)
            x = self.ln_pre(x)
            return rearrange(x, "(b t) l d -> b t l d", b=b)  # (B, T, 1+N, D)
        x = self.patch_embed(video)  # (B, D, T, h, w)
        x = rearrange(x, "b d t h w -> b (t h w) d") + self.pos_embed.to(x.dtype)  # (B, T*N, D)
        return rearrange(x, "b (t n) d -> b t n d", t=self.num_steps)  # (B, T, N, D)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, L, D) -> one feature (B, D): mean class token, or mean of all tokens."""
        pooled = x[:, :, 0].mean(1) if self.cfg.has_class_token else x.mean((1, 2))  # (B, D)
        return self.norm(pooled)

    def forward_tokens(self, video: torch.Tensor, joint_time: bool) -> list[torch.Tensor]:
        """Embedding plus the output of every block, each (B, T, L, D)."""
        x = self.embed(video)
        states = [x]
        for block in self.blocks:
            x = block(x, joint_time)
            states.append(x)
        return states

    def forward(self, video: torch.Tensor, joint_time: bool) -> torch.Tensor:
        """The expert alone: (B, 3, 2T, H, W) -> pooled feature (B, D)."""
        x = self.embed(video)
        for block in self.blocks:
            x = block(x, joint_time)
        return self.pool(x)
