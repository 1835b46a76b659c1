"""Information exchange between the experts inside each block (eq. 4): B-CAST and its ablations.

Every exchange module takes the two experts' tokens after self-attention, ys (B, T, Ls, Ds) and
yt (B, T, Lt, Dt), and returns the residual updates (delta_s, delta_t) of the same shapes (None for
an expert that receives nothing). Patch token (t, n) of one expert sits at the same place in the video
as patch token (t, n) of the other: CLIP's frame t is frame 2t+1, inside VideoMAE's tube t.
Class tokens never take part in cross-attention; in B-CAST they still go through the
down / LN / GELU / up path, as in the official model.

Reading order: `BCASTConfig` (what one block's exchange needs), `WindowCrossAttention` (eq. 7 inside a
window of Figure 3(c)), `CrossExchange.forward` (the skeleton every cross-attention variant shares),
then the three variants of Table 1(c): `BCAST` (eq. 8, Figure 8(d)), `CrossAttentionExchange`
(Figure 8(b)) and `CrossAttentionAdapterExchange` (Figure 8(c)).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from .layers import Adapter, CrossAttention, zero_init

WINDOWS = ("time", "space", "spacetime")
VARIANTS = ("bcast", "xattn", "xattn_adapter")  # Table 1(c): B-CAST, "w/o adapter", "X-attn -> adapter"

# How a window groups (B, T, N, d) tokens into independent attention problems, how it ungroups the
# output, and the layout of its attention maps (every map ends in its keys, so each sums to 1 over
# the last axis).
_GROUP = {
    "time": ("b t n d -> (b n) t d", "(b n) t d -> b t n d",  # attend along time at a fixed place
             "(b n) h q k -> b h n q k"),  # (B, H, N places, T query steps, T key steps)
    "space": ("b t n d -> (b t) n d", "(b t) n d -> b t n d",  # attend along space at a fixed time
              "(b t) h q k -> b h t q k"),  # (B, H, T steps, N query patches, N key patches)
    "spacetime": ("b t n d -> b (t n) d", "b (t n) d -> b t n d",  # attend everywhere
                  "b h q k -> b h q k"),  # (B, H, T*N queries, T*N keys), index t*N + n
}


@dataclass(frozen=True)
class BCASTConfig:
    """One block's cross exchange: the geometry of the two experts' tokens and the ablation knobs.

    `dim` is the bottleneck width of B-CAST (Table 1(d): ratio x the narrower expert's width,
    resolved by `CASTConfig.bottleneck_dim`); the full-width variants attend at the experts' width.
    """

    dim_s: int  # spatial expert width Ds
    dim_t: int  # temporal expert width Dt
    num_steps: int  # T
    num_patches: int  # N
    dim: int  # bottleneck width d
    heads: int
    prefix_s: int = 1  # class tokens in front of the spatial expert's patches
    prefix_t: int = 0
    t2s: bool = True  # Table 1(g): which directions exchange
    s2t: bool = True
    t2s_window: str = "time"  # Table 1(e)
    s2t_window: str = "space"
    pos_embed: bool = True  # Table 8: B-CAST-specific position embeddings
    variant: str = "bcast"  # Table 1(c)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"cross exchange variant must be one of {VARIANTS}, got {self.variant!r}")
        for window in (self.t2s_window, self.s2t_window):
            if window not in WINDOWS:
                raise ValueError(f"cross-attention window must be one of {WINDOWS}, got {window!r}")
        if not (self.t2s or self.s2t):
            raise ValueError("a cross exchange needs at least one of T2S and S2T")
        if self.variant != "bcast" and self.dim_s != self.dim_t:
            raise ValueError(f"cross-attention without a bottleneck needs equal expert widths, "
                             f"got {self.dim_s} and {self.dim_t}")


class WindowCrossAttention(nn.Module):
    """MHCA (eq. 7) restricted to a window, with B-CAST-specific position embeddings (appendix D.2).

    T2S (window "time") adds time embeddings, S2T (window "space") space embeddings, each expert its
    own table; "spacetime" adds both. Positions are added to the normalised tokens before the q / kv
    projections (the E_s + LN(.) of eq. 8), so keys and values both see them.
    """

    def __init__(self, dim: int, heads: int, window: str, num_steps: int, num_patches: int, pos_embed: bool):
        super().__init__()
        if window not in WINDOWS:
            raise ValueError(f"cross-attention window must be one of {WINDOWS}, got {window!r}")
        self.window = window
        self.attn = CrossAttention(dim, heads)
        std = (dim // heads) ** -0.5
        use_time = pos_embed and window in ("time", "spacetime")
        use_space = pos_embed and window in ("space", "spacetime")
        self.pos_q_time = nn.Parameter(std * torch.randn(num_steps, 1, dim)) if use_time else None  # (T, 1, d)
        self.pos_kv_time = nn.Parameter(std * torch.randn(num_steps, 1, dim)) if use_time else None
        self.pos_q_space = nn.Parameter(std * torch.randn(num_patches, dim)) if use_space else None  # (N, d)
        self.pos_kv_space = nn.Parameter(std * torch.randn(num_patches, dim)) if use_space else None

    def _grouped(self, q: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the positions and group (B, T, N, d) tokens into the window's attention problems."""
        for pos in (self.pos_q_time, self.pos_q_space):
            if pos is not None:
                q = q + pos.to(q.dtype)
        for pos in (self.pos_kv_time, self.pos_kv_space):
            if pos is not None:
                kv = kv + pos.to(kv.dtype)
        group = _GROUP[self.window][0]
        return rearrange(q, group), rearrange(kv, group)  # (groups, window, d) each

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q, kv: patch tokens (B, T, N, d) -> (B, T, N, d)."""
        b, t = q.shape[:2]
        out = self.attn(*self._grouped(q, kv))  # (groups, window, d)
        return rearrange(out, _GROUP[self.window][1], b=b, t=t)  # (B, T, N, d)

    def attention_map(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """The softmax(q k^T / sqrt(d)) that `forward` applies, recomputed from the same projections
        (float32). Layout by window (see `_GROUP`): time (B, H, N, T, T), space (B, H, T, N, N),
        spacetime (B, H, T*N, T*N); each row sums to 1 over the last (key) axis."""
        probs = self.attn.attention_probs(*self._grouped(q, kv))  # (groups, H, Lq, Lk)
        return rearrange(probs, _GROUP[self.window][2], b=q.shape[0])


class CrossExchange(nn.Module, ABC):
    """The skeleton of every cross-attention exchange (eq. 4's Phi), one direction at a time:

        Phi_S(Y_s, Y_t) = up_s(act(MHCA_T2S(E_s + LN(down_s(Y_s)), E_t + LN(down_t(Y_t)))))   (eq. 8)

    and Phi_T alike with the roles swapped (S2T). The projected, normalised tokens of an expert are the
    queries of its own direction and the keys/values of the other. A variant decides the projections
    (`_down`, `_activation`, `_up`) and which weight starts at zero (`init_weights`); the module names
    (down_s, norm_s, t2s, up_s, ...) are those of the state dicts and the official converter.
    """

    def __init__(self, cfg: BCASTConfig, width: int):
        super().__init__()
        self.cfg = cfg
        self.prefix_s, self.prefix_t = cfg.prefix_s, cfg.prefix_t
        self.down_s, self.down_t = self._down(cfg.dim_s, width), self._down(cfg.dim_t, width)
        self.norm_s = nn.LayerNorm(width, eps=1e-6)
        self.norm_t = nn.LayerNorm(width, eps=1e-6)
        geometry = dict(num_steps=cfg.num_steps, num_patches=cfg.num_patches, pos_embed=cfg.pos_embed)
        self.t2s = WindowCrossAttention(width, cfg.heads, cfg.t2s_window, **geometry) if cfg.t2s else None
        self.s2t = WindowCrossAttention(width, cfg.heads, cfg.s2t_window, **geometry) if cfg.s2t else None
        self.act = self._activation()
        self.up_s = self._up(width, cfg.dim_s) if cfg.t2s else None
        self.up_t = self._up(width, cfg.dim_t) if cfg.s2t else None

    @abstractmethod
    def _down(self, in_dim: int, width: int) -> nn.Module:
        """Y -> the width the attention runs at (W_D of eq. 8)."""

    @abstractmethod
    def _activation(self) -> nn.Module:
        """The nonlinearity after the attention (sigma of eq. 8)."""

    @abstractmethod
    def _up(self, width: int, out_dim: int) -> nn.Module:
        """The attention width -> the expert's width (W_U of eq. 8)."""

    @abstractmethod
    def init_weights(self) -> None:
        """Every path ends at zero, so an untrained exchange leaves both experts untouched."""

    def project(self, ys: torch.Tensor, yt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LN(down(Y)) of both experts: (B, T, Ls, d) and (B, T, Lt, d), the inputs of both MHCAs."""
        return self.norm_s(self.down_s(ys)), self.norm_t(self.down_t(yt))

    def _direction(self, xattn: WindowCrossAttention, up: nn.Module, z_q: torch.Tensor, prefix_q: int,
                   z_kv: torch.Tensor, prefix_kv: int) -> torch.Tensor:
        patches = xattn(z_q[:, :, prefix_q:], z_kv[:, :, prefix_kv:])  # (B, T, N, d)
        z = torch.cat([z_q[:, :, :prefix_q], patches], dim=2)  # class tokens skip the attention
        return up(self.act(z))  # (B, T, L, D)

    def forward(self, ys: torch.Tensor, yt: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        zs, zt = self.project(ys, yt)  # (B, T, Ls, d), (B, T, Lt, d)
        delta_s = self._direction(self.t2s, self.up_s, zs, self.prefix_s, zt, self.prefix_t) if self.t2s else None
        delta_t = self._direction(self.s2t, self.up_t, zt, self.prefix_t, zs, self.prefix_s) if self.s2t else None
        return delta_s, delta_t


class BCAST(CrossExchange):
    """B-CAST (eq. 8, Figure 8(d)): per expert down-projection to the bottleneck width -> LayerNorm ->
    windowed MHCA -> GELU -> up-projection, which starts at zero."""

    def __init__(self, cfg: BCASTConfig):
        super().__init__(cfg, cfg.dim)

    def _down(self, in_dim: int, width: int) -> nn.Module:
        return nn.Linear(in_dim, width)  # W_D

    def _activation(self) -> nn.Module:
        return nn.GELU()  # sigma

    def _up(self, width: int, out_dim: int) -> nn.Module:
        return nn.Linear(width, out_dim)  # W_U

    def init_weights(self) -> None:
        for up in (self.up_s, self.up_t):
            if up is not None:
                zero_init(up)


class CrossAttentionExchange(CrossExchange):
    """"w/o adapter" (Figure 8(b)): LayerNorm and MHCA at the experts' full width (eq. 7 alone), added
    to the experts directly; the attention's output projection starts at zero."""

    def __init__(self, cfg: BCASTConfig):
        super().__init__(cfg, cfg.dim_s)

    def _down(self, in_dim: int, width: int) -> nn.Module:
        return nn.Identity()

    def _activation(self) -> nn.Module:
        return nn.Identity()

    def _up(self, width: int, out_dim: int) -> nn.Module:
        return nn.Identity()

    def init_weights(self) -> None:
        for xattn in (self.t2s, self.s2t):
            if xattn is not None:
                zero_init(xattn.attn.proj)


class CrossAttentionAdapterExchange(CrossAttentionExchange):
    """"X-attn -> adapter" (Figure 8(c)): full-width MHCA followed by a 1/4 bottleneck adapter (eq. 2)
    per expert, whose up-projection starts at zero."""

    def _up(self, width: int, out_dim: int) -> nn.Module:
        return Adapter(width, 0.25, out_dim)

    def init_weights(self) -> None:
        for up in (self.up_s, self.up_t):
            if up is not None:
                zero_init(up.fc2)


EXCHANGE_CLASSES: dict[str, type[CrossExchange]] = {
    "bcast": BCAST, "xattn": CrossAttentionExchange, "xattn_adapter": CrossAttentionAdapterExchange,
}


def build_cross_exchange(cfg: BCASTConfig) -> CrossExchange:
    """The Table 1(c) variant that `cfg.variant` names."""
    return EXCHANGE_CLASSES[cfg.variant](cfg)


class LateralExchange(nn.Module):
    """Layer-wise bidirectional lateral connection (Table 1(b), Figure 7(c)).

    Each expert adds a linear projection of the other's token at the same place (element-wise
    addition); class tokens receive nothing. Projections start at zero.
    """

    def __init__(self, *, dim_s: int, dim_t: int, prefix_s: int, prefix_t: int):
        super().__init__()
        self.prefix_s, self.prefix_t = prefix_s, prefix_t
        self.t_to_s = nn.Linear(dim_t, dim_s)
        self.s_to_t = nn.Linear(dim_s, dim_t)

    def init_weights(self) -> None:
        zero_init(self.t_to_s)
        zero_init(self.s_to_t)

    @staticmethod
    def _pad_prefix(x: torch.Tensor, prefix: int) -> torch.Tensor:
        return torch.cat([x.new_zeros(*x.shape[:2], prefix, x.shape[-1]), x], dim=2)

    def forward(self, ys: torch.Tensor, yt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ps, pt = ys[:, :, self.prefix_s:], yt[:, :, self.prefix_t:]  # (B, T, N, Ds), (B, T, N, Dt)
        return (self._pad_prefix(self.t_to_s(pt), self.prefix_s),
                self._pad_prefix(self.s_to_t(ps), self.prefix_t))
