"""The frozen experts: image ViTs (CLIP, SigLIP, DINOv2), video ViTs (VideoMAE, V-JEPA 2), one interface.

Every expert keeps its tokens in one layout, (B, T, P+N, D): T time steps (every second frame for an
image expert, 2-frame tubes for a video expert), P prefix tokens (CLIP's and DINOv2's class token, DINOv2's
registers; none for SigLIP, VideoMAE and V-JEPA 2) and N patches of a grid x grid raster. B-CAST and pooling skip
the prefix. The role an expert plays decides only how attention groups those tokens: the spatial role
attends within a time step ((B*T, L, D)), the temporal role over all of space-time ((B, T*L, D)). That
is what lets Table 1(h) put either architecture in either role.

What differs between families is data, not code paths: `ARCH_SPECS` says for each how it embeds
(frames or tubes), its prefix, its position scheme, biases, activation, LayerNorm eps, LayerScale and
pooling. Per block CAST calls the attention branch and the MLP branch separately (eq. 3 and 5), each
with its LayerScale inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import ConfigError
from ..normalization import PIXEL_STATS
from .layers import AttentionPool, Mlp, RotaryPositions, SelfAttention, sinusoid_table, trunc_normal_init


@dataclass(frozen=True)
class ArchSpec:
    """The conventions a family's pretrained weights depend on."""

    embed: str  # "frames": Conv2d patches of every second frame; "tubes": Conv3d over 2-frame tubes
    class_token: bool
    positions: str  # "learned": a table resized to the grid when loaded; "sincos": fixed space-time table;
    # "rope3d": rotary positions over (time, height, width) inside attention (V-JEPA 2)
    class_position: bool  # the class token has a learned position (CLIP, DINOv2)
    patch_bias: bool
    qkv_bias: str  # SelfAttention's: "qkv" or "qv"
    act: str
    ln_eps: float
    ln_pre: bool  # a LayerNorm after the embedding (CLIP)
    layer_scale: bool  # a learned per-channel scale at the end of each branch (DINOv2)
    pooling: str  # "cls": the mean class token; "mean": the mean patch token; "map": attention pooling


ARCH_SPECS = {
    "clip": ArchSpec("frames", True, "learned", True, False, "qkv", "quick_gelu", 1e-5, True, False, "cls"),
    "videomae": ArchSpec("tubes", False, "sincos", False, True, "qv", "gelu", 1e-6, False, False, "mean"),
    "siglip": ArchSpec("frames", False, "learned", False, True, "qkv", "gelu_tanh", 1e-6, False, False, "map"),
    "dinov2": ArchSpec("frames", True, "learned", True, True, "qkv", "gelu", 1e-6, False, True, "cls"),
    "vjepa2": ArchSpec("tubes", False, "rope3d", False, True, "qkv", "gelu", 1e-6, False, False, "mean"),
}
ARCHS = tuple(ARCH_SPECS)


@dataclass
class ExpertConfig:
    """One expert ViT. `arch` fixes the conventions that pretrained weights depend on (`ARCH_SPECS`):

    clip: Conv2d patches without bias on every second frame (frames 1, 3, 5, ...), class token,
      learned position embedding, ln_pre, QuickGELU, q/k/v biases, LayerNorm eps 1e-5.
    videomae: Conv3d tubelets (tubelet_size x patch x patch) with bias, fixed sine-cosine table over
      space-time, GELU, q and v biases only, LayerNorm eps 1e-6.
    siglip: Conv2d patches with bias, no class token, learned positions, tanh-GELU, attention-pooling
      (MAP) head; SigLIP 2 FixRes checkpoints are this architecture.
    dinov2: Conv2d patches with bias, class token, `num_registers` register tokens (0 for plain
      DINOv2), learned positions for class and patches, LayerScale in both branches.
    vjepa2: V-JEPA 2's encoder: Conv3d tubelets, no position table but 3D rotary positions in every
      attention (their grid is the expert's: set `img_size` to the checkpoint's crop), q/k/v biases.

    `img_size` is the side this expert sees (None: the clip's). An expert whose patch differs is fed
    the same crop resized, so the same field of view gives the same grid: patch 14 at 224 px and patch
    16 at 256 px are both 16 x 16.
    """

    arch: str = "clip"
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 16
    tubelet_size: int = 2
    norm: str | None = None  # pixel statistics this expert expects (PIXEL_STATS); None: the model's input_norm
    num_registers: int = 0
    img_size: int | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"expert arch must be one of {ARCHS}, got {self.arch!r}")
        if self.norm is not None and self.norm not in PIXEL_STATS:
            raise ValueError(f"expert norm must be one of {tuple(PIXEL_STATS)} or null, got {self.norm!r}")
        if self.num_registers and self.arch != "dinov2":
            raise ValueError(f"register tokens are a DINOv2 feature; a {self.arch} expert has none")

    @property
    def spec(self) -> ArchSpec:
        return ARCH_SPECS[self.arch]

    @property
    def has_class_token(self) -> bool:
        return self.spec.class_token

    @property
    def num_prefix(self) -> int:
        """P: tokens before the patches in every time step (class token, then registers)."""
        return int(self.spec.class_token) + self.num_registers

    @property
    def ln_eps(self) -> float:
        return self.spec.ln_eps

    @property
    def resize_antialias(self) -> bool:
        """Whether a learned position grid is resized with antialiasing, as transformers does it for this
        checkpoint family at another resolution: DINOv2 with registers yes, the others (and plain DINOv2) no."""
        return self.num_registers > 0

    def grid(self, input_size: int) -> int:
        """Patches per side when the clip is `input_size` pixels square."""
        size = self.img_size or input_size
        if size % self.patch_size:
            raise ConfigError(f"{self.arch} expert: image size {size} is not divisible by its patch size "
                              f"{self.patch_size}")
        return size // self.patch_size


class ExpertBlock(nn.Module):
    """A frozen pre-LN transformer block; CAST calls its two branches one by one (eq. 3 and 5).

    x' = x + ls1 * MHSA(LN1(x)); x'' = x' + ls2 * MLP(LN2(x')), with the LayerScales ls1, ls2 (DINOv2)
    inside their branches, so an adapter around a branch sees what the block would have added.
    """

    def __init__(self, cfg: ExpertConfig, rope: nn.Module | None = None):
        super().__init__()
        spec = cfg.spec
        self.rope = rope  # the expert's RotaryPositions, shared by its blocks (V-JEPA 2); None otherwise
        self.norm1 = nn.LayerNorm(cfg.width, eps=spec.ln_eps)
        self.attn = SelfAttention(cfg.width, cfg.heads, qkv_bias=spec.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.width, eps=spec.ln_eps)
        self.mlp = Mlp(cfg.width, round(cfg.width * cfg.mlp_ratio), spec.act)
        self.ls1 = nn.Parameter(torch.ones(cfg.width)) if spec.layer_scale else None
        self.ls2 = nn.Parameter(torch.ones(cfg.width)) if spec.layer_scale else None

    def attention(self, x: torch.Tensor, joint_time: bool) -> torch.Tensor:
        """The attention branch, ls1 * MHSA(LN(x)), for x of shape (B, T, L, D): within each time step,
        or over all of space-time."""
        b, t = x.shape[:2]
        pattern = "b t l d -> b (t l) d" if joint_time else "b t l d -> (b t) l d"
        rope = self.rope.tables(joint_time) if self.rope is not None else None
        y = self.attn(rearrange(self.norm1(x), pattern), rope)  # (B, T*L, D) or (B*T, L, D)
        if self.ls1 is not None:
            y = y * self.ls1.to(y.dtype)
        back = "b (t l) d -> b t l d" if joint_time else "(b t) l d -> b t l d"
        return rearrange(y, back, b=b, t=t)  # (B, T, L, D)

    def feed_forward(self, h: torch.Tensor) -> torch.Tensor:
        """The MLP branch on already normalised tokens h = LN2(x): ls2 * MLP(h)."""
        y = self.mlp(h)
        return y * self.ls2.to(y.dtype) if self.ls2 is not None else y

    def forward(self, x: torch.Tensor, joint_time: bool) -> torch.Tensor:
        x = x + self.attention(x, joint_time)
        return x + self.feed_forward(self.norm2(x))


class ViTExpert(nn.Module):
    """An expert on its own: embedding, blocks, the final norm that CAST fine-tunes, and the pooling.

    Pooling (`ArchSpec.pooling`), as each family is used for a clip-level feature:
    cls: norm(mean over time of the class token): CLIP's ln_post as in the official CAST, DINOv2's
      final LayerNorm (its pooled output is the normalised class token).
    mean: norm(mean of all patch tokens): VideoMAE's fc_norm.
    map: SigLIP's attention-pooling head on the normalised tokens of each time step, averaged over time.
    """

    def __init__(self, cfg: ExpertConfig, num_frames: int, img_size: int, input_norm: str = "imagenet"):
        super().__init__()
        if num_frames % 2:
            raise ConfigError(f"CAST takes an even number of frames (2T), got {num_frames}")
        self.cfg = cfg
        spec = cfg.spec
        self.input_size = img_size  # side of the clip CAST is given
        self.grid = cfg.grid(img_size)
        self.img_size = self.grid * cfg.patch_size  # side this expert sees
        self.num_patches = self.grid * self.grid  # N
        self.num_steps = num_frames // 2  # T: every second frame for image experts, 2-frame tubes for VideoMAE
        d = cfg.width
        self.class_embedding = self.register_tokens = self.ln_pre = self.map_head = None
        if spec.embed == "frames":
            self.patch_embed = nn.Conv2d(3, d, cfg.patch_size, cfg.patch_size, bias=spec.patch_bias)
            if spec.class_token:
                self.class_embedding = nn.Parameter(torch.zeros(d))
            positions = self.num_patches + int(spec.class_position)
            self.pos_embed = nn.Parameter(torch.zeros(positions, d))  # (1+N, D) or (N, D)
            if cfg.num_registers:
                self.register_tokens = nn.Parameter(torch.zeros(cfg.num_registers, d))  # (R, D)
            if spec.ln_pre:
                self.ln_pre = nn.LayerNorm(d, eps=spec.ln_eps)
        else:
            if num_frames % cfg.tubelet_size or num_frames // cfg.tubelet_size != self.num_steps:
                raise ConfigError("the temporal expert's tubelet size must be 2 so that its tubes align "
                                  f"with the spatial expert's frames (got {cfg.tubelet_size})")
            kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
            self.patch_embed = nn.Conv3d(3, d, kernel, kernel)
            if spec.positions == "sincos":
                table = sinusoid_table(self.num_steps * self.num_patches, d)  # (T*N, D)
                self.register_buffer("pos_embed", table, persistent=False)
            else:
                self.pos_embed = None
        rope = RotaryPositions(self.num_steps, self.grid, d // cfg.heads) if spec.positions == "rope3d" else None
        self.blocks = nn.ModuleList(ExpertBlock(cfg, rope) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=spec.ln_eps)
        if spec.pooling == "map":
            self.map_head = AttentionPool(d, cfg.heads, round(d * cfg.mlp_ratio), spec.act, spec.ln_eps)
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
        return self.cfg.num_prefix

    def init_weights(self) -> None:
        """Random init for tests and from-scratch pre-training; real use loads pretrained weights."""
        self.apply(trunc_normal_init)
        nn.init.trunc_normal_(self.patch_embed.weight, std=0.02)
        scale = self.cfg.width**-0.5
        for param in (self.class_embedding, self.register_tokens):
            if param is not None:
                nn.init.normal_(param, std=scale)
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=scale)
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        if self.map_head is not None:
            nn.init.normal_(self.map_head.probe, std=scale)

    def _resize(self, frames: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) frames of the clip -> (M, 3, s, s) at this expert's side s, when it differs:
        the same field of view at the resolution that gives this expert the shared grid."""
        if self.img_size == self.input_size:
            return frames
        return F.interpolate(frames, size=(self.img_size, self.img_size), mode="bilinear", antialias=True,
                             align_corners=False)

    def embed(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 2T, H, W) normalised video -> tokens (B, T, P+N, D)."""
        b = video.shape[0]
        if self.renorm:
            video = video * self.pixel_scale.to(video.dtype) + self.pixel_shift.to(video.dtype)  # (B, 3, 2T, H, W)
        if self.cfg.spec.embed == "frames":
            frames = self._resize(rearrange(video[:, :, 1::2], "b c t h w -> (b t) c h w"))  # (B*T, 3, H, W)
            x = self._frame_tokens(rearrange(self.patch_embed(frames), "bt d h w -> bt (h w) d"))  # (B*T, P+N, D)
            return rearrange(x, "(b t) l d -> b t l d", b=b)  # (B, T, P+N, D)
        if self.img_size != self.input_size:
            frames = self._resize(rearrange(video, "b c f h w -> (b f) c h w"))  # (B*2T, 3, h, w)
            video = rearrange(frames, "(b f) c h w -> b c f h w", b=b)
        x = rearrange(self.patch_embed(video), "b d t h w -> b (t h w) d")  # (B, T*N, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        return rearrange(x, "b (t n) d -> b t n d", t=self.num_steps)  # (B, T, N, D)

    def _frame_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of frames (B*T, N, D) -> with the prefix and positions, (B*T, P+N, D)."""
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B*T, 1, D)
            x = torch.cat([cls, x], dim=1)  # (B*T, 1+N, D)
        x = x + self.pos_embed.to(x.dtype)
        if self.register_tokens is not None:  # after the class token, without a position (DINOv2)
            reg = self.register_tokens.to(x.dtype).expand(x.shape[0], -1, -1)  # (B*T, R, D)
            x = torch.cat([x[:, :1], reg, x[:, 1:]], dim=1)  # (B*T, 1+R+N, D)
        return self.ln_pre(x) if self.ln_pre is not None else x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, P+N, D) -> one feature (B, D), by the family's pooling (see the class docstring)."""
        pooling = self.cfg.spec.pooling
        if pooling == "cls":
            return self.norm(x[:, :, 0].mean(1))  # (B, D)
        if pooling == "mean":
            return self.norm(x[:, :, self.num_prefix:].mean((1, 2)))  # (B, D)
        b = x.shape[0]
        per_step = self.map_head(rearrange(self.norm(x), "b t l d -> (b t) l d"))  # (B*T, D)
        return rearrange(per_step, "(b t) d -> b t d", b=b).mean(1)  # (B, D)

    def forward_tokens(self, video: torch.Tensor, joint_time: bool) -> list[torch.Tensor]:
        """Embedding plus the output of every block, each (B, T, P+N, D)."""
        x = self.embed(video)
        states = [x]
        for block in self.blocks:
            x = block(x, joint_time)
            states.append(x)
        return states

    def forward(self, video: torch.Tensor, joint_time: bool) -> torch.Tensor:
        """The expert alone: (B, 3, 2T, H, W) -> pooled feature (B, D)."""
        return self.pool(self.forward_tokens(video, joint_time)[-1])
