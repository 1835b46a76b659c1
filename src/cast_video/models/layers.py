"""Small transformer parts shared by both experts and by B-CAST.

Every attention in the package (the experts' self-attention and every cross-attention) goes through
`multi_head_attention`, so one switch (`torch.nn.attention.sdpa_kernel`) selects the kernel everywhere:
flash / memory-efficient on GPUs, the fused CPU kernel here, or the math path for FLOP counting.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import ConfigError


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                         rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Scaled dot-product attention over projected tokens; the one attention of the package.

    q: (B, Lq, H*d), k and v: (B, Lk, H*d) -> (B, Lq, H*d). Scale is d**-0.5, as in CLIP and VideoMAE.
    `rope` (cos, sin), each (L, d): rotary positions applied to q and k of every head (V-JEPA 2).
    """
    q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=num_heads) for t in (q, k, v))  # (B, H, L, d)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, Lq, d)
    return rearrange(out, "b h l d -> b l (h d)")  # (B, Lq, H*d)


def attention_probs(q: torch.Tensor, k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """The attention weights that `multi_head_attention` applies, softmax(q k^T / sqrt(d)), in float32.

    Only for looking at attention (the fused kernel never materialises them): q (B, Lq, H*d), k (B, Lk, H*d)
    -> (B, H, Lq, Lk), each row summing to 1 over the keys.
    """
    q, k = (rearrange(t.float(), "b l (h d) -> b h l d", h=num_heads) for t in (q, k))  # (B, H, L, d)
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1)  # (B, H, Lq, Lk)


class _FrozenBackward:
    """Whether `linear` gives frozen layers a bf16 input gradient: a plain class attribute (not a
    ContextVar, which torch.compile cannot trace), set for the calling process by the context below."""

    bf16 = False


@contextlib.contextmanager
def frozen_backward_in_bf16():
    """Inside this context, `linear` layers with a frozen weight carry the gradient back to their input
    in bf16 (`CASTConfig.frozen_backward`): for the frozen experts, that GEMM, dL/dx = dL/dy W, is half
    of a training step's matrix work, and bf16 units run it several times faster than fp32 (2.6x on
    an AVX512-BF16 core, docs/benchmarks.md)."""
    before, _FrozenBackward.bf16 = _FrozenBackward.bf16, True
    try:
        yield
    finally:
        _FrozenBackward.bf16 = before


class _LinearInputGradInBf16(torch.autograd.Function):
    """F.linear, whose backward gives the input's gradient only, dL/dx = dL/dy W, from bf16 copies of
    dL/dy and W (the GEMM accumulates in fp32; its result is rounded to bf16, then returned as x's
    dtype). For frozen weights, which need no gradient of their own; W is saved, not copied."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (weight,) = ctx.saved_tensors
        grad_x = torch.matmul(grad_out.bfloat16(), weight.bfloat16())  # (..., out) @ (out, in) -> (..., in)
        return grad_x.to(grad_out.dtype), None, None


def _autocasting(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)  # meta: none


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b, as F.linear. Inside `frozen_backward_in_bf16`, a frozen float32 layer (weight and bias
    without gradients) on an input that needs one, outside autocast, returns its input gradient in bf16."""
    if (_FrozenBackward.bf16 and x.requires_grad and x.dtype == torch.float32
            and not weight.requires_grad and (bias is None or not bias.requires_grad)
            and torch.is_grad_enabled() and not _autocasting(x.device.type)):
        return _LinearInputGradInBf16.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    `qkv_bias` covers the two expert conventions: CLIP has a bias on q, k and v ("qkv"); VideoMAE and
    BEiT keep q and v biases but no k bias ("qv"), since a k bias cancels in the softmax.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: str = "qkv"):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"width {dim} is not divisible by {num_heads} heads")
        if qkv_bias not in ("qkv", "qv", "none"):
            raise ValueError(f"qkv_bias must be 'qkv', 'qv' or 'none', got {qkv_bias!r}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias != "none" else None
        self.k_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias == "qkv" else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias != "none" else None
        self.proj = nn.Linear(dim, dim)

    def qkv_bias_vector(self) -> torch.Tensor | None:
        if self.q_bias is None:
            return None
        k_bias = self.k_bias if self.k_bias is not None else torch.zeros_like(self.q_bias)
        return torch.cat([self.q_bias, k_bias, self.v_bias])  # (3*D,)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        qkv = linear(x, self.qkv.weight, self.qkv_bias_vector())  # (B, L, 3*D)
        q, k, v = qkv.chunk(3, dim=-1)  # 3 x (B, L, D)
        return linear(multi_head_attention(q, k, v, self.num_heads, rope), self.proj.weight, self.proj.bias)


class CrossAttention(nn.Module):
    """Multi-head cross-attention (eq. 7): queries from one expert, keys and values from the other."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"cross-attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        k, v = self.kv(x_kv).chunk(2, dim=-1)  # 2 x (B, Lk, D)
        return self.proj(multi_head_attention(self.q(x_q), k, v, self.num_heads))  # (B, Lq, D)

    def attention_probs(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        """The (B, H, Lq, Lk) weights `forward` uses, recomputed from the same q and k projections."""
        k = self.kv(x_kv).chunk(2, dim=-1)[0]  # (B, Lk, D)
        return attention_probs(self.q(x_q), k, self.num_heads)


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU, x * sigmoid(1.702 x); its weights were trained with it.

    Written as silu(1.702 x) / 1.702 (the same function): autograd then keeps one tensor for backward,
    not the two (x and the sigmoid) of the product, which in CAST-B/16 training is 222 MB of the 2.2 GB
    a step keeps (docs/benchmarks.md, "What training keeps for backward").
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(1.702 * x) / 1.702


ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU}


class Mlp(nn.Module):
    """fc2(act(fc1(x))); the activation is the one the expert's weights were trained with (`ACTIVATIONS`)."""

    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {act!r}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(linear(x, self.fc1.weight, self.fc1.bias))  # (..., hidden)
        return linear(h, self.fc2.weight, self.fc2.bias)


class AttentionPool(nn.Module):
    """Multi-head attention pooling (SigLIP's MAP head): one learned query attends over the tokens,
    then a residual MLP: z = MHCA(probe, X); out = z + MLP(LN(z))."""

    def __init__(self, dim: int, heads: int, hidden: int, act: str, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(dim))
        self.attn = CrossAttention(dim, heads)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, hidden, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, D)."""
        z = self.attn(self.probe.to(x.dtype).expand(x.shape[0], 1, -1), x)  # (B, 1, D)
        return (z + self.mlp(self.norm(z)))[:, 0]


class Adapter(nn.Module):
    """Bottleneck adapter (eq. 2): GELU(x W_D) W_U.

    The up-projection starts at zero, so a freshly built adapter adds nothing and CAST starts from
    the frozen experts. `out_dim` lets the head adapters map experts of different widths to one width.
    """

    def __init__(self, dim: int, ratio: float = 0.25, out_dim: int | None = None):
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample, rescaling the kept ones."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SavedInBf16(torch.autograd.graph.saved_tensors_hooks):
    """Inside this context, the float32 activations autograd saves for backward are kept in bfloat16
    and turned back into float32 when backward reads them: half the memory, at bf16's rounding (a
    relative 2**-9) of what backward computes from them.

    Tensors whose storage is in `keep` (the model's parameters and buffers: resident anyway, and a
    copy would add memory), non-float32 tensors, small ones (under `min_numel`) and per-token
    statistics (a last axis of 1: LayerNorm's means and inverse deviations) are kept as they are.
    `packed` counts the values stored in bf16 so far.
    """

    def __init__(self, keep: set[int], min_numel: int = 4096):
        self.packed = 0

        def pack(t: torch.Tensor):
            if (t.dtype != torch.float32 or t.numel() < min_numel or t.shape[-1] == 1
                    or t.untyped_storage().data_ptr() in keep):
                return t
            self.packed += t.numel()
            return (t.to(torch.bfloat16),)  # a tuple marks what was packed

        def unpack(packed):
            return packed[0].float() if isinstance(packed, tuple) else packed

        super().__init__(pack, unpack)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., L, d) by the angles in cos / sin (L, d):
    x * cos + (-x_{2i+1}, x_{2i}) * sin."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., L, d/2, 2)
    swapped = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (..., L, d)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


def rope_3d(steps: int, grid: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """V-JEPA 2's 3D rotary positions for `steps` x grid x grid tokens (t, h, w raster): (cos, sin),
    each (steps*grid*grid, head_dim).

    The head is split into three equal even sections (time, height, width; channels left over are not
    rotated). In a section of size s, channel j turns by p * 10000^(-(j mod s/2) / (s/2)) for the
    token's position p on that axis, the layout V-JEPA 2's weights were trained with.
    """
    section = 2 * (head_dim // 3 // 2)
    t, h, w = torch.meshgrid(torch.arange(steps), torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(section // 2, dtype=torch.float32) / (section / 2))  # (s/2,)
    angles = [(pos.reshape(-1, 1).float() * omega).repeat(1, 2) for pos in (t, h, w)]  # 3 x (L, s)
    rest = torch.zeros(steps * grid * grid, head_dim - 3 * section)  # (L, d - 3s): not rotated
    angle = torch.cat([*angles, rest], dim=-1)  # (L, d)
    return angle.cos(), angle.sin()


class RotaryPositions(nn.Module):
    """The rotary tables of one expert, shared by its blocks: for joint space-time attention over
    (T*N) tokens, and for attention within a time step (N tokens; a time offset common to all tokens
    would cancel in q.k anyway)."""

    def __init__(self, steps: int, grid: int, head_dim: int):
        super().__init__()
        cos, sin = rope_3d(steps, grid, head_dim)
        self.register_buffer("cos", cos, persistent=False)  # (T*N, d)
        self.register_buffer("sin", sin, persistent=False)
        self.per_step = grid * grid

    def tables(self, joint_time: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if joint_time:
            return self.cos, self.sin
        return self.cos[: self.per_step], self.sin[: self.per_step]  # time step 0: (N, d)


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed sine-cosine table of "Attention is all you need", as VideoMAE uses it: (P, D).

    Channel 2i holds sin(p / 10000^(2i/D)) and channel 2i+1 the matching cosine (interleaved).
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (P, 1)
    exponent = (torch.arange(dim) // 2 * 2).to(torch.float64) / dim  # (D,)
    angle = position / torch.pow(10000.0, exponent)  # (P, D)
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """ViT initialisation for fresh layers: truncated-normal linear weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def zero_init(linear: nn.Linear) -> None:
    nn.init.zeros_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


def interpolate_grid(pos: torch.Tensor, new_grid: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bicubic resize of a (h*w, D) grid of position embeddings to (H*W, D)."""
    n, dim = pos.shape
    side = int(math.isqrt(n))
    if side * side != n:
        raise ValueError(f"position grid of {n} tokens is not square")
    if (side, side) == tuple(new_grid):
        return pos
    grid = rearrange(pos, "(h w) d -> 1 d h w", h=side).float()  # (1, D, h, w)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=antialias)  # (1, D, H, W)
    return rearrange(grid, "1 d h w -> (h w) d").to(pos.dtype)  # (H*W, D)
