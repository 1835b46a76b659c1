"""The demo's knobs. The defaults are the demo (`make demo`); configs/demo/*.yaml hold the same values
and a tiny variant for tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..seeds import DEFAULT_SEED
from .synth import SynthConfig


@dataclass
class SpatialPretrainConfig:
    """The spatial expert learns digits from still images (no motion), as CLIP learned from images."""

    stills: int = 8000
    epochs: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05


@dataclass
class TemporalPretrainConfig:
    """VideoMAE on the training clips, labels unused (`cast_video.pretrain`)."""

    epochs: int = 30
    warmup_epochs: int = 3
    batch_size: int = 32
    lr: float = 1.5e-3  # per 256 clips
    mask_ratio: float = 0.9
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 4


@dataclass
class ExperimentConfig:
    """Fine-tuning of adapters, exchange and heads on frozen experts, the same recipe for every method."""

    methods: list[str] = field(default_factory=lambda: ["independent_adapters", "late_concat", "cast"])
    epochs: int = 12
    warmup_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05


@dataclass
class DemoConfig:
    seed: int = DEFAULT_SEED
    clips: dict[str, int] = field(default_factory=lambda: {"train": 2400, "validation": 400, "test": 800})
    synth: SynthConfig = field(default_factory=SynthConfig)
    width: int = 64  # both experts; depth, heads and patch size are cast_tiny's
    spatial: SpatialPretrainConfig = field(default_factory=SpatialPretrainConfig)
    temporal: TemporalPretrainConfig = field(default_factory=TemporalPretrainConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    threads: int = 0  # torch threads; 0 keeps torch's default (one per core)

    def __post_init__(self):
        missing = {"train", "validation", "test"} - set(self.clips)
        if missing:
            raise ValueError(f"clips: missing split(s) {sorted(missing)}")
        for name in self.experiment.methods:
            if name not in METHODS:
                raise ValueError(f"experiment.methods: unknown method {name!r}; methods: {', '.join(METHODS)}")


# Method name -> (ablation of cast_tiny or None for CAST itself, label in the table).
METHODS = {
    "independent_adapters": ("independent_adapters", "Independent experts + adapters"),
    "ensemble": ("ensemble", "Test-time ensemble"),
    "late_add": ("late_add", "Late fusion (add)"),
    "late_concat": ("late_concat", "Late fusion (concat)"),
    "lateral": ("lateral", "Layer-wise lateral"),
    "cast": (None, "CAST (B-CAST)"),
}
