"""CAST: two frozen expert ViTs that trade information in every block through B-CAST.

Reading order: `CASTConfig` (every option, one per ablation of the paper), `CASTBlock.forward`
(eq. 3-5 of one block), `CAST.forward_features` (embedding and the stacked blocks) and
`CAST.forward_head` (eq. 6 or the split EK100 heads).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..normalization import PIXEL_STATS
from .bcast import BCASTConfig, LateralExchange, build_cross_exchange
from .capture import capture_cross_attention, relevance_maps
from .experts import ExpertBlock, ExpertConfig, ViTExpert
from .layers import Adapter, DropPath, SavedInBf16, frozen_backward_in_bf16, trunc_normal_init, zero_init

EXCHANGES = ("bcast", "xattn", "xattn_adapter", "lateral", "none")
HEAD_SOURCES = ("spatial", "temporal", "fused")
FUSIONS = ("adapter_add", "add", "concat")
ENSEMBLE_MEMBERS = ("spatial", "temporal")
# What a training forward keeps for backward (`CASTConfig.memory`; trade-offs in docs/benchmarks.md).
MEMORY_MODES = ("full", "recompute", "bf16", "recompute_bf16")
FROZEN_BACKWARDS = ("fp32", "bf16")


def member_key(head: str, member: str) -> str:
    """The output key of one ensemble member's logits for a head: `verb/spatial`."""
    return f"{head}/{member}"


@dataclass
class HeadConfig:
    """One classification task. `source` picks the feature: the spatial expert's mean class token,
    the temporal expert's pooled tokens, or their fusion (eq. 6). `labels` names the classes by id
    (transformers' `id2label`), so a saved model says what it predicts; empty when unknown."""

    name: str
    num_classes: int
    source: str = "fused"
    labels: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.source not in HEAD_SOURCES:
            raise ValueError(f"head {self.name!r}: source must be one of {HEAD_SOURCES}, got {self.source!r}")
        if self.num_classes < 1:
            raise ValueError(f"head {self.name!r}: num_classes must be positive, got {self.num_classes}")
        if self.labels and len(self.labels) != self.num_classes:
            raise ValueError(f"head {self.name!r}: {len(self.labels)} labels for {self.num_classes} classes")


@dataclass
class CASTConfig:
    """The whole model. Defaults are the paper's CAST-B/16; each ablation of Table 1 and Table 8 is a
    value of one field (see `ABLATIONS`)."""

    spatial: ExpertConfig = field(default_factory=lambda: ExpertConfig(arch="clip"))
    temporal: ExpertConfig = field(default_factory=lambda: ExpertConfig(arch="videomae"))
    heads: list[HeadConfig] = field(default_factory=lambda: [HeadConfig("action", 400, "fused")])
    num_frames: int = 16  # 2T input frames
    img_size: int = 224
    input_norm: str = "imagenet"  # pixel statistics of the input clip; an expert with its own `norm` converts
    # Exchange between the experts in each block (Table 1(b), 1(c)).
    exchange: str = "bcast"
    bcast_ratio: float = 0.5  # bottleneck width / narrower expert width (Table 1(d))
    bcast_dim: int | None = None  # explicit bottleneck width; overrides bcast_ratio
    bcast_heads: int | None = None  # cross-attention heads; default: the spatial expert's
    bcast_layers: list[int] | None = None  # blocks that exchange (Table 1(f)); None = all
    t2s: bool = True  # Table 1(g)
    s2t: bool = True
    t2s_window: str = "time"  # Table 1(e)
    s2t_window: str = "space"
    bcast_pos_embed: bool = True  # Table 8
    # Adaptation of the experts (Table 1(a)).
    adapters: bool = True
    adapter_ratio: float = 0.25
    mlp_adapter_scale: float = 0.5
    freeze_experts: bool = True
    fusion: str = "adapter_add"  # how "fused" heads combine the two features
    ensemble: bool = False  # every head on both experts, trained each on its own, probabilities averaged
    drop_path: float = 0.0
    head_dropout: float = 0.0
    # Activation checkpointing per block while training: activations are recomputed in the backward
    # pass, trading about a third more compute for memory (0.62x peak on the tiny preset, CPU).
    grad_checkpointing: bool = False
    # What the frozen experts' activations cost in training, when grad_checkpointing is off (and not
    # under torch.compile, which plans that itself):
    # "full": autograd keeps every activation in fp32 (the reference);
    # "recompute": the exchange and LN2 + MLP adapter of each block are recomputed in backward from
    #   their inputs (exact; the same drop-path masks);
    # "bf16": every activation the blocks keep (frozen branches, adapters, exchange) is stored in bf16
    #   and read back as fp32: the same forward, gradients within bf16 rounding;
    # "recompute_bf16": both.
    memory: str = "full"
    # How training carries the gradient back through the frozen experts' linear layers (dL/dx = dL/dy W,
    # half of a step's matrix work): "fp32", exact; "bf16", that GEMM on bf16 copies of dL/dy and W
    # (fp32 accumulation), the forward unchanged. Not used under autocast, which runs it in bf16 already,
    # nor under torch.compile (as `memory`).
    frozen_backward: str = "fp32"

    def __post_init__(self):
        if self.memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {self.memory!r}")
        if self.frozen_backward not in FROZEN_BACKWARDS:
            raise ValueError(f"frozen_backward must be one of {FROZEN_BACKWARDS}, got {self.frozen_backward!r}")
        if self.exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {EXCHANGES}, got {self.exchange!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.input_norm not in PIXEL_STATS:
            raise ValueError(f"input_norm must be one of {tuple(PIXEL_STATS)}, got {self.input_norm!r}")
        deep, shallow = max(self.spatial.depth, self.temporal.depth), min(self.spatial.depth, self.temporal.depth)
        if deep % shallow:
            raise ValueError(f"the experts' depths must be equal or one a multiple of the other (blocks are paired "
                             f"k to 1), got spatial {self.spatial.depth} and temporal {self.temporal.depth}")
        self._check_grids()
        if not self.heads:
            raise ValueError("at least one head is needed")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        for i in self.bcast_layers or []:
            if not 0 <= i < self.depth:
                raise ValueError(f"bcast_layers: block {i} does not exist (depth {self.depth})")
        if self.fusion == "add" and self.spatial.width != self.temporal.width and any(
            h.source == "fused" for h in self.heads
        ):
            raise ValueError("fusion 'add' needs equal expert widths; use 'adapter_add' or 'concat'")

    def _check_grids(self) -> None:
        """Token (t, n) of one expert must cover the pixels of token (t, n) of the other: equal grids."""
        experts = {"spatial": self.spatial, "temporal": self.temporal}
        grids = {role: e.grid(self.img_size) for role, e in experts.items()}  # raises if a side is not a multiple
        if grids["spatial"] != grids["temporal"]:
            said = [f"{role} {e.arch} (patch {e.patch_size} at {e.img_size or self.img_size} px) has "
                    f"{grids[role]}x{grids[role]}" for role, e in experts.items()]
            raise ValueError(f"the experts' token grids differ: {', '.join(said)}; set spatial.img_size / "
                             "temporal.img_size to grid x patch so both see the same grid")

    @property
    def depth(self) -> int:
        """CAST blocks: the shallower expert's depth. Block-to-block map for experts of depths d and k*d:
        CAST block i holds expert blocks k*i .. k*i+k-1 of the deeper expert; the first k-1 of them run
        as the expert alone would (frozen, no adapters), the last one is adapted and exchanges with block i
        of the shallower expert (so B-CAST sits at the same relative depth in both)."""
        return min(self.spatial.depth, self.temporal.depth)

    def blocks_per_step(self, role: str) -> int:
        """k: expert blocks of `role` per CAST block (1 for experts of equal depth)."""
        return getattr(self, role).depth // self.depth

    @property
    def bottleneck_dim(self) -> int:
        return self.bcast_dim or max(1, int(self.bcast_ratio * min(self.spatial.width, self.temporal.width)))

    def trained_outputs(self) -> dict[str, str]:
        """Output key -> the head whose target it is trained on. A model trains each head's logits; the
        ensemble trains its two members' logits (`verb/spatial`, `verb/temporal`) each on its own, and
        its head key holds their averaged prediction, which is never trained."""
        if not self.ensemble:
            return {h.name: h.name for h in self.heads}
        return {member_key(h.name, m): h.name for h in self.heads for m in ENSEMBLE_MEMBERS}

    def exchanges_at(self, layer: int) -> bool:
        return self.exchange != "none" and (self.bcast_layers is None or layer in self.bcast_layers)

    def bcast_config(self, num_steps: int, num_patches: int) -> BCASTConfig:
        """What a cross exchange ("bcast", "xattn", "xattn_adapter") of one block is built from."""
        return BCASTConfig(
            dim_s=self.spatial.width, dim_t=self.temporal.width, num_steps=num_steps, num_patches=num_patches,
            dim=self.bottleneck_dim, heads=self.bcast_heads or self.spatial.heads,
            prefix_s=self.spatial.num_prefix, prefix_t=self.temporal.num_prefix,
            t2s=self.t2s, s2t=self.s2t, t2s_window=self.t2s_window, s2t_window=self.s2t_window,
            pos_embed=self.bcast_pos_embed, variant=self.exchange,
        )


class CASTBlock(nn.Module):
    """The trainable part of one block: four adapters and the exchange. The frozen expert blocks are
    passed in, so their weights keep the experts' own names (`spatial.blocks.i`, `temporal.blocks.i`)."""

    def __init__(self, cfg: CASTConfig, layer: int, drop_path: float, num_steps: int, num_patches: int):
        super().__init__()
        ds, dt = cfg.spatial.width, cfg.temporal.width
        make = (lambda d: Adapter(d, cfg.adapter_ratio)) if cfg.adapters else (lambda d: None)
        self.s_attn_adapter, self.t_attn_adapter = make(ds), make(dt)
        self.s_mlp_adapter, self.t_mlp_adapter = make(ds), make(dt)
        self.mlp_adapter_scale = cfg.mlp_adapter_scale
        prefixes = dict(prefix_s=cfg.spatial.num_prefix, prefix_t=cfg.temporal.num_prefix)
        if not cfg.exchanges_at(layer):
            self.exchange = None
        elif cfg.exchange == "lateral":
            self.exchange = LateralExchange(dim_s=ds, dim_t=dt, **prefixes)
        else:
            self.exchange = build_cross_exchange(cfg.bcast_config(num_steps, num_patches))
        self.drop_path = DropPath(drop_path)

    def init_weights(self) -> None:
        self.apply(trunc_normal_init)
        for adapter in (self.s_attn_adapter, self.t_attn_adapter, self.s_mlp_adapter, self.t_mlp_adapter):
            if adapter is not None:
                zero_init(adapter.fc2)
        if self.exchange is not None:
            self.exchange.init_weights()

    def forward(self, xs: torch.Tensor, xt: torch.Tensor, spatial: ExpertBlock, temporal: ExpertBlock,
                recompute: bool = False):
        """xs: spatial tokens (B, T, Ls, Ds), xt: temporal tokens (B, T, Lt, Dt); shapes are kept.

        `recompute`: recompute the exchange and LN2 + MLP adapter in backward (`CASTConfig.memory`); it
        does not change the forward's values.
        """
        # eq. 3: Y = X + MHSA(LN(X)) + ADAP(MHSA(LN(X))); spatial attention within a frame,
        # temporal attention over space-time.
        a_s = spatial.attention(xs, joint_time=False)
        a_t = temporal.attention(xt, joint_time=True)
        xs = xs + a_s + (self.s_attn_adapter(a_s) if self.s_attn_adapter is not None else 0)
        xt = xt + a_t + (self.t_attn_adapter(a_t) if self.t_attn_adapter is not None else 0)
        # eq. 4: B = Y + Phi(Y_s, Y_t)
        if self.exchange is not None:
            if recompute:  # only xs and xt are kept; the exchange runs again in backward
                delta_s, delta_t = checkpoint(self.exchange, xs, xt, use_reentrant=False)
            else:
                delta_s, delta_t = self.exchange(xs, xt)
            if delta_s is not None:
                xs = xs + self.drop_path(delta_s)
            if delta_t is not None:
                xt = xt + self.drop_path(delta_t)
        # eq. 5: X' = B + FFN(LN(B)) + s * ADAP(LN(B)), s = 0.5 as in the official model
        xs = self._ffn(xs, spatial, self.s_mlp_adapter, recompute)
        xt = self._ffn(xt, temporal, self.t_mlp_adapter, recompute)
        return xs, xt

    def _ffn(self, x: torch.Tensor, block: ExpertBlock, adapter: Adapter | None, recompute: bool) -> torch.Tensor:
        if adapter is None:
            return x + block.feed_forward(block.norm2(x))
        if recompute:  # keeps x only: LN2 and the adapter run again in backward
            h, side = checkpoint(_norm_and_adapt, x, block.norm2, adapter, use_reentrant=False)
        else:
            h = block.norm2(x)
            side = adapter(h)
        return x + block.feed_forward(h) + self.drop_path(self.mlp_adapter_scale * side)


def _norm_and_adapt(x: torch.Tensor, norm: nn.Module, adapter: Adapter) -> tuple[torch.Tensor, torch.Tensor]:
    """(LN2(x), ADAP(LN2(x))) of eq. 5; the frozen MLP reads the first, which it does not keep."""
    h = norm(x)
    return h, adapter(h)


class CAST(nn.Module):
    """CAST on a normalised clip (B, 3, 2T, H, W).

    Returns a dict {head name: logits (B, C)}, always, one entry per head (EK100: verb and noun; a
    single-head model: {"action": ...}). Softmax of a head's logits is the model's prediction. With
    `ensemble=True` (the test-time ensemble of Table 1(b)) a head's entry is the log of its members'
    mean probability, so its softmax is the averaged prediction, and the members' own logits come
    beside it under `member_key(head, member)`; `config.trained_outputs()` names what the loss trains.
    """

    def __init__(self, config: CASTConfig):
        super().__init__()
        self.config = cfg = config
        # {role: {"source": path or hub id, "format": name}}: where `weights.load_experts` took each
        # expert from. Loading and saving live in `cast_video.weights`, which this module never imports.
        self.expert_sources: dict[str, dict[str, str]] = {}
        self.spatial = ViTExpert(cfg.spatial, cfg.num_frames, cfg.img_size, cfg.input_norm)
        self.temporal = ViTExpert(cfg.temporal, cfg.num_frames, cfg.img_size, cfg.input_norm)
        steps, patches = self.spatial.num_steps, self.spatial.num_patches
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear decay rule
        self.blocks = nn.ModuleList(CASTBlock(cfg, i, rates[i], steps, patches) for i in range(cfg.depth))

        ds, dt = cfg.spatial.width, cfg.temporal.width
        fused = [h for h in cfg.heads if h.source == "fused"] and not cfg.ensemble
        if fused and cfg.fusion == "adapter_add":
            self.fuse_s, self.fuse_t = Adapter(ds, cfg.adapter_ratio), Adapter(dt, cfg.adapter_ratio, ds)
        else:
            self.fuse_s = self.fuse_t = None
        fused_dim = ds + dt if cfg.fusion == "concat" else ds
        in_dim = {"spatial": ds, "temporal": dt, "fused": fused_dim}
        self.head_dropout = nn.Dropout(cfg.head_dropout)
        if cfg.ensemble:
            self.heads = nn.ModuleDict({h.name: nn.Linear(ds, h.num_classes) for h in cfg.heads})
            self.heads_t = nn.ModuleDict({h.name: nn.Linear(dt, h.num_classes) for h in cfg.heads})
        else:
            self.heads = nn.ModuleDict({h.name: nn.Linear(in_dim[h.source], h.num_classes) for h in cfg.heads})
            self.heads_t = None
        self.init_weights()
        self.freeze()

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> CAST:
        """A preset (`cast_b16_ek100`, ...) with keyword or dotted overrides: `from_preset(
        "cast_tiny", exchange="none")`, `from_preset("cast_tiny", **{"spatial.depth": 2})`."""
        from .presets import preset_config

        return cls(preset_config(name, overrides))

    def init_weights(self) -> None:
        """Fresh init of everything CAST adds; expert weights are loaded afterwards."""
        for block in self.blocks:
            block.init_weights()
        for module in (self.fuse_s, self.fuse_t, self.heads, self.heads_t):
            if module is not None:
                module.apply(trunc_normal_init)
        for adapter in (self.fuse_s, self.fuse_t):
            if adapter is not None:
                zero_init(adapter.fc2)

    def freeze(self) -> None:
        """Freeze the experts except their final norms (what the paper trains with them)."""
        for expert in (self.spatial, self.temporal):
            for name, p in expert.named_parameters():
                p.requires_grad = not self.config.freeze_experts or name.startswith("norm.")

    def train(self, mode: bool = True) -> CAST:
        """Frozen experts stay in eval mode while CAST trains: they are used as pretrained, whatever
        train-time behaviour a family's layers may have (the final norm CAST tunes has none)."""
        super().train(mode)
        if self.config.freeze_experts:
            self.spatial.eval()
            self.temporal.eval()
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def cast_frozen_(self, dtype: torch.dtype) -> CAST:
        """Store the frozen Linear and Conv weights and biases in `dtype` (in place), for autocast runs.

        Autocast caches its casts of weights that require grad only, so under bf16 autocast every
        frozen fp32 matmul weight is cast again in every forward. Cast once here, the matmuls get the
        same bf16 values (so the same outputs) at half the weight memory and without the casts.
        Trainable weights stay fp32 for the optimizer; norms, position tables and the class token
        stay fp32 as autocast keeps them. Run the model under autocast of `dtype` from then on.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                for param in module.parameters(recurse=False):
                    if not param.requires_grad:
                        param.data = param.data.to(dtype)
        return self

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise learning-rate decay: 0 for the embeddings, i+1 for block
        i (both experts and both exchange directions of a block share it), depth+1 for norms and heads."""
        parts = name.split(".")
        if parts[0] == "blocks":
            return int(parts[1]) + 1
        if parts[0] in ("spatial", "temporal"):
            if parts[1] == "blocks":  # the CAST block it belongs to (several per block for a deeper expert)
                return int(parts[2]) // self.config.blocks_per_step(parts[0]) + 1
            if parts[1] == "norm":
                return self.config.depth + 1
            return 0
        return self.config.depth + 1

    def no_weight_decay(self, name: str, param: torch.Tensor) -> bool:
        """Biases, norms and position embeddings are not decayed."""
        return param.ndim <= 1 or "pos" in name.split(".")[-1] or name.endswith("class_embedding")

    # --- forward ------------------------------------------------------------------------------
    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 2T, H, W) -> spatial tokens (B, T, Ps+N, Ds) and temporal tokens (B, T, Pt+N, Dt) (P: prefix)."""
        self._check_input(video)
        xs = self.spatial.embed(video)
        xt = self.temporal.embed(video)
        kept = self.training and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        checkpointing = self.config.grad_checkpointing and self.training and torch.is_grad_enabled()
        bf16_backward = kept and self.config.frozen_backward == "bf16"
        recomputed = frozen_backward_in_bf16 if bf16_backward else nullcontext  # what checkpoints rerun under
        with ExitStack() as plan:
            recompute = self._memory_plan(plan) if kept and not checkpointing else False
            if bf16_backward:
                plan.enter_context(frozen_backward_in_bf16())
            for i in range(len(self.blocks)):
                if checkpointing:  # recompute activations in backward: less memory
                    xs, xt = checkpoint(self._step, i, xs, xt, use_reentrant=False,
                                        context_fn=lambda: (nullcontext(), recomputed()))
                else:
                    xs, xt = self._step(i, xs, xt, recompute)
        return xs, xt

    def _memory_plan(self, plan: ExitStack) -> bool:
        """Enters the context the blocks run in for `CASTConfig.memory` into `plan` and says whether
        to recompute. Only where autograd keeps activations: not in eval or under no_grad, and not
        under torch.compile, whose partitioner chooses what to keep and recompute for the whole graph."""
        if self.config.memory in ("bf16", "recompute_bf16"):  # everything the blocks save, in bf16, but the weights
            resident = [*self.parameters(), *self.buffers()]
            plan.enter_context(SavedInBf16({t.untyped_storage().data_ptr() for t in resident}))
        return self.config.memory in ("recompute", "recompute_bf16")

    def _step(self, i: int, xs: torch.Tensor, xt: torch.Tensor, recompute: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """CAST block i (eq. 3-5), after the deeper expert's unadapted blocks before it (`CASTConfig.depth`)."""
        ks, kt = self.config.blocks_per_step("spatial"), self.config.blocks_per_step("temporal")
        for plain in self.spatial.blocks[i * ks:(i + 1) * ks - 1]:
            xs = plain(xs, joint_time=False)
        for plain in self.temporal.blocks[i * kt:(i + 1) * kt - 1]:
            xt = plain(xt, joint_time=True)
        return self.blocks[i](xs, xt, self.spatial.blocks[(i + 1) * ks - 1], self.temporal.blocks[(i + 1) * kt - 1],
                              recompute=recompute)

    def pool_embeddings(self, tokens: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The features the heads read: {"spatial": CLS(X_s) (B, Ds), "temporal": GAP(X_t) (B, Dt)}, and
        "fused" (eq. 6, (B, Ds) or (B, Ds+Dt) for concat) where a head reads the fusion."""
        fs = self.spatial.pool(tokens[0])  # (B, Ds): CLS(X_s)
        ft = self.temporal.pool(tokens[1])  # (B, Dt): GAP(X_t)
        feats = {"spatial": fs, "temporal": ft}
        if self.heads_t is None and any(h.source == "fused" for h in self.config.heads):
            feats["fused"] = self._fuse(fs, ft)
        return feats

    def forward_head(self, tokens: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pooled features -> {head name: logits (B, C)} (eq. 6 for fused heads)."""
        feats = self.pool_embeddings(tokens)
        drop = self.head_dropout
        if self.heads_t is not None:
            return self._ensemble_head(drop(feats["spatial"]), drop(feats["temporal"]))
        return {h.name: self.heads[h.name](drop(feats[h.source])) for h in self.config.heads}

    def _ensemble_head(self, fs: torch.Tensor, ft: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's logits, and per head log(mean of the members' softmax): softmax of it is the
        ensemble's averaged probability (computed in fp32, stable through logsumexp)."""
        out = {}
        for name in self.heads:
            members = dict(zip(ENSEMBLE_MEMBERS, (self.heads[name](fs), self.heads_t[name](ft)), strict=True))
            log_p = torch.stack([m.float().log_softmax(-1) for m in members.values()])  # (2, B, C)
            out[name] = torch.logsumexp(log_p, dim=0) - math.log(len(members))  # (B, C)
            out.update({member_key(name, m): logits for m, logits in members.items()})
        return out

    def _fuse(self, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        if self.config.fusion == "adapter_add":  # eq. 6: Z = ADAP(CLS) + ADAP(GAP)
            return self.fuse_s(fs) + self.fuse_t(ft)
        if self.config.fusion == "add":
            return fs + ft
        return torch.cat([fs, ft], dim=-1)  # (B, Ds+Dt)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_head(self.forward_features(video))

    # --- looking inside (opt-in; `forward` is unchanged) -----------------------------------------
    def forward_embeddings(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, 2T, H, W) -> `pool_embeddings`: every head's logits are a linear layer of one of them."""
        return self.pool_embeddings(self.forward_features(video))

    def cross_attention_maps(self, video: torch.Tensor):
        """The logits and {block: {"t2s": map, "s2t": map}} of every block with cross-attention; the
        layouts are in `models/capture.py` (for B/16: T2S (B, 12, 196, 8, 8), S2T (B, 12, 8, 196, 196))."""
        with capture_cross_attention(self) as maps:
            logits = self(video)
        return logits, maps

    def relevance_maps(self, video: torch.Tensor, targets: dict[str, int | None] | None = None, layer: int = -1):
        """The logits and Grad-CAM {head: {"spatial": (B, T, N), "temporal": (B, T, N)}} for each head's
        `targets` class (default: the predicted one), on the tokens entering block `layer`."""
        return relevance_maps(self, video, targets or {}, layer)

    def _check_input(self, video: torch.Tensor) -> None:
        cfg = self.config
        expected = (3, cfg.num_frames, cfg.img_size, cfg.img_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"CAST expects a clip of shape (B, {', '.join(map(str, expected))}) "
                             f"(B, C, 2T, H, W), got {tuple(video.shape)}")

    def extra_repr(self) -> str:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for _, p in self.trainable_parameters())
        return f"params={total:,}, trainable={trainable:,}"
