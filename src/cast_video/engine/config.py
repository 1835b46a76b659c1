"""`TrainConfig`: everything a run needs, as one typed dataclass loaded from YAML with overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..data.config import DataConfig
from ..errors import ConfigError
from ..precision import PRECISIONS
from ..seeds import DEFAULT_SEED


@dataclass
class ModelSpec:
    preset: str = "cast_tiny"
    ablation: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted CASTConfig keys, e.g. {"bcast_ratio": 0.25}
    # The experts' architectures from `weights.spatial` / `weights.temporal` (transformers folders or hub
    # ids, e.g. SigLIP 2 + VideoMAE), read from their own configs; the preset gives everything else.
    from_experts: bool = False


@dataclass
class WeightsSpec:
    """Where the experts start from (file, directory or hub id); `init`: a saved cast-video model whose
    weights start the run (its heads are re-created when the classes differ). The CLI refuses to train
    random frozen experts unless `allow_random` (they would stay random: the run learns nothing useful)."""

    spatial: str = ""
    temporal: str = ""
    trusted: bool = False
    init: str = ""
    allow_random: bool = False


@dataclass
class OptimConfig:
    """Table 4 of the paper: AdamW, base lr 1e-3 scaled by total batch / 256, cosine with warm-up."""

    base_lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay: float = 0.75
    epochs: int = 50
    warmup_epochs: float = 5.0
    batch_size: int = 6  # per process
    update_freq: int = 1  # gradient accumulation
    clip_grad: float | None = None
    recipe_total_batch: int = 0  # the total batch a recipe was tuned at (warns when run at another); 0: none
    on_nonfinite: str = "stop"  # a NaN/inf loss: stop (save the state before it) | skip (drop that step)
    max_nonfinite: int = 3  # with skip: stop after this many skipped steps in a row

    def __post_init__(self):
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError(f"optim.on_nonfinite must be stop or skip, got {self.on_nonfinite!r}")
        if self.update_freq < 1:
            raise ConfigError(f"optim.update_freq must be at least 1, got {self.update_freq}")


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output_dir: str = "runs/train"
    seed: int = DEFAULT_SEED
    precision: str = "auto"  # auto (cast_video/precision.py: bf16 where faster) | bf16 | fp16 (+ GradScaler) | fp32
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    num_workers: int = 4
    resume: str = ""  # "" (fresh), "auto" (the run folder's latest checkpoint) or a checkpoint path
    save_every_steps: int = 0  # 0 = at the end of every epoch only
    keep_last: int = 2
    eval_every_epochs: int = 1
    log_every_steps: int = 10
    groups: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # task -> {group: class ids}, F1 by group

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
