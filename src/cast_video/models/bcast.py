"""Information exchange between the experts inside each block (eq. 4): B-CAST and its ablations.

Every exchange module takes the two experts' tokens after self-attention, ys (B, T, Ls, Ds) and
yt (B, T, Lt, Dt), and returns the residual updates (delta_s, delta_t) of the same shapes (None for
an expert that receives nothing). Patch token (t, n) of one expert sits at the same place in the video
as patch token (t, n) of the other: CLIP's frame t is frame 2t+1, inside VideoMAE's tube t.
Class tokens never take part in cross-attention; in B-CAST they still go through the
down / LN / GELU / up path, as in the official model.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .layers import Adapter, CrossAttention, zero_init

WINDOWS = ("time", "space", "spacetime")

# How a window groups (B, T, N, d) tokens into independent attention problems.
_GROUP = {
    "time": ("b t n d -> (b n) t d", "(b n) t d -> b t n d"),  # attend along time at a fixed place
    "space": ("b t n d -> (b t) n d", "(b t) n d -> b t n d"),  # attend along space at a fixed time
    "spacetime": ("b t n d -> b (t n) d", "b (t n) d -> b t n d"),  # attend everywhere
}


class WindowCrossAttention(nn.Module):
    """MHCA restricted to a window, with B-CAST-specific position embeddings (appendix D.2).

    T2S (window "time") adds time embeddings, S2T (window "space") space embeddings, each expert its
    own table; "spacetime" adds both. Positions are added to the normalised tokens before the q / kv
    projections, so keys and values both see them.
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

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q, kv: patch tokens (B, T, N, d) -> (B, T, N, d)."""
        for pos in (self.pos_q_time, self.pos_q_space):
            if pos is not None:
                q = q + pos.to(q.dtype)
        for pos in (self.pos_kv_time, self.pos_kv_space):
            if pos is not None:
                kv = kv + pos.to(kv.dtype)
        group, ungroup = _GROUP[self.window]
        b, t = q.shape[:2]
        out = self.attn(rearrange(q, group), rearrange(kv, group))  # (groups, window, d)
        return rearrange(out, ungroup, b=b, t=t)  # (B, T, N, d)


class CrossExchange(nn.Module):
    """B-CAST (eq. 8) and the Table 1(c) variants built from the same pieces.

    bottleneck=True (B-CAST): per expert down-projection to `dim` -> LayerNorm -> windowed MHCA ->
      GELU -> up-projection (zero-initialised). The down-projected, normalised tokens of an expert are
      the queries of its own direction and the keys/values of the other direction.
    bottleneck=False: LayerNorm at full width -> MHCA at full width (needs equal widths), then either
      added directly ("w/o adapter", output projection zero-initialised) or through a 1/4 adapter
      ("X-attn -> adapter").
    """

    def __init__(self, *, dim_s: int, dim_t: int, prefix_s: int, prefix_t: int, num_steps: int,
                 num_patches: int, dim: int, heads: int, t2s: bool, s2t: bool, t2s_window: str,
                 s2t_window: str, pos_embed: bool, bottleneck: bool, post_adapter: bool):
        super().__init__()
        if not (t2s or s2t):
            raise ValueError("a cross exchange needs at least one of T2S and S2T")
        if not bottleneck and dim_s != dim_t:
            raise ValueError(f"cross-attention without a bottleneck needs equal expert widths, got {dim_s} and {dim_t}")
        self.prefix_s, self.prefix_t = prefix_s, prefix_t
        self.bottleneck = bottleneck
        width = dim if bottleneck else dim_s
        self.down_s = nn.Linear(dim_s, width) if bottleneck else nn.Identity()
        self.down_t = nn.Linear(dim_t, width) if bottleneck else nn.Identity()
        eps = 1e-6
        self.norm_s = nn.LayerNorm(width, eps=eps)
        self.norm_t = nn.LayerNorm(width, eps=eps)
        geometry = dict(num_steps=num_steps, num_patches=num_patches, pos_embed=pos_embed)
        self.t2s = WindowCrossAttention(width, heads, t2s_window, **geometry) if t2s else None
        self.s2t = WindowCrossAttention(width, heads, s2t_window, **geometry) if s2t else None
        self.act = nn.GELU() if bottleneck else nn.Identity()
        self.up_s = self._output(t2s, width, dim_s, post_adapter)
        self.up_t = self._output(s2t, width, dim_t, post_adapter)

    def _output(self, used: bool, width: int, out_dim: int, post_adapter: bool) -> nn.Module | None:
        if not used:
            return None
        if self.bottleneck:
            return nn.Linear(width, out_dim)
        return Adapter(width, 0.25, out_dim) if post_adapter else nn.Identity()

    def init_weights(self) -> None:
        """Every path ends at zero, so an untrained exchange leaves both experts untouched."""
        for up, xattn in ((self.up_s, self.t2s), (self.up_t, self.s2t)):
            if isinstance(up, nn.Linear):
                zero_init(up)
            elif isinstance(up, Adapter):
                zero_init(up.fc2)
            elif up is not None:
                zero_init(xattn.attn.proj)

    def _direction(self, xattn: WindowCrossAttention, up: nn.Module, z_q: torch.Tensor, prefix_q: int,
                   z_kv: torch.Tensor, prefix_kv: int) -> torch.Tensor:
        patches = xattn(z_q[:, :, prefix_q:], z_kv[:, :, prefix_kv:])  # (B, T, N, d)
        z = torch.cat([z_q[:, :, :prefix_q], patches], dim=2)  # class tokens skip the attention
        return up(self.act(z))  # (B, T, L, D)

    def forward(self, ys: torch.Tensor, yt: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        zs = self.norm_s(self.down_s(ys))  # (B, T, Ls, d)
        zt = self.norm_t(self.down_t(yt))  # (B, T, Lt, d)
        delta_s = self._direction(self.t2s, self.up_s, zs, self.prefix_s, zt, self.prefix_t) if self.t2s else None
        delta_t = self._direction(self.s2t, self.up_t, zt, self.prefix_t, zs, self.prefix_s) if self.s2t else None
        return delta_s, delta_t


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
