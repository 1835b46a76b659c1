"""Named configurations: the paper's three CAST-B/16 models, two with newer experts, a tiny one, and
the ablations.

Class counts are facts of the datasets (EK100: 97 verbs and 300 nouns; SSV2: 174; K400: 400), not
constants inside the model: a preset only fills `CASTConfig.heads`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config_utils import ConfigError, apply_overrides
from .cast import CASTConfig, HeadConfig
from .experts import ExpertConfig


def _b16(arch: str) -> ExpertConfig:
    return ExpertConfig(arch=arch, width=768, depth=12, heads=12, patch_size=16)


def _tiny(arch: str) -> ExpertConfig:
    return ExpertConfig(arch=arch, width=64, depth=4, heads=4, patch_size=8)


PRESETS: dict[str, CASTConfig] = {
    "cast_b16_ek100": CASTConfig(
        spatial=_b16("clip"), temporal=_b16("videomae"),
        heads=[HeadConfig("verb", 97, "temporal"), HeadConfig("noun", 300, "spatial")],
        drop_path=0.2,
    ),
    "cast_b16_ssv2": CASTConfig(
        spatial=_b16("clip"), temporal=_b16("videomae"), heads=[HeadConfig("action", 174, "fused")], drop_path=0.3,
    ),
    "cast_b16_k400": CASTConfig(
        spatial=_b16("clip"), temporal=_b16("videomae"), heads=[HeadConfig("action", 400, "fused")], drop_path=0.2,
    ),
    # Newer experts. CAST-B: SigLIP 2 B/16 (google/siglip2-base-patch16-224, Apache-2.0) + VideoMAE-B
    # (MCG-NJU/videomae-base, CC-BY-NC-4.0). CAST-L: DINOv2-L/14 (facebook/dinov2-large, Apache-2.0) +
    # V-JEPA 2-L (facebook/vjepa2-vitl-fpc64-256, MIT) on a 256 px crop that DINOv2 sees at 224 px: both
    # grids 16 x 16 (V-JEPA 2's rotary grid is its 256 px crop's).
    "cast_b16_siglip2_k400": CASTConfig(
        spatial=dataclasses.replace(_b16("siglip"), norm="siglip"), temporal=_b16("videomae"),
        heads=[HeadConfig("action", 400, "fused")], drop_path=0.2,
    ),
    "cast_l_dinov2_vjepa2_k400": CASTConfig(
        spatial=ExpertConfig(arch="dinov2", width=1024, depth=24, heads=16, patch_size=14, img_size=224,
                             norm="imagenet"),
        temporal=ExpertConfig(arch="vjepa2", width=1024, depth=24, heads=16, patch_size=16, norm="imagenet"),
        heads=[HeadConfig("action", 400, "fused")], img_size=256, drop_path=0.2,
    ),
    # For tests and the demo: 8 frames of 32x32, 4x4 patches of 8 pixels, width 64, 4 blocks.
    "cast_tiny": CASTConfig(
        spatial=_tiny("clip"), temporal=_tiny("videomae"),
        heads=[HeadConfig("verb", 8, "temporal"), HeadConfig("noun", 10, "spatial")],
        num_frames=8, img_size=32,
    ),
}


def _late(fusion: str):
    def apply(cfg: CASTConfig) -> CASTConfig:
        heads = [dataclasses.replace(h, source="fused") for h in cfg.heads]
        return dataclasses.replace(cfg, exchange="none", fusion=fusion, heads=heads)

    return apply


def _set(**changes):
    return lambda cfg: dataclasses.replace(cfg, **changes)


# One entry per row of Table 1 and Table 8 that is not a plain value of a field.
ABLATIONS = {
    # Table 1(a): information exchange
    "independent": _set(exchange="none", adapters=False, freeze_experts=False),
    "independent_adapters": _set(exchange="none"),
    "ensemble": _set(exchange="none", ensemble=True),
    # Table 1(b): other ways to exchange
    "late_add": _late("add"),
    "late_concat": _late("concat"),
    "lateral": _set(exchange="lateral"),
    # Table 1(c): B-CAST architecture
    "identity": _set(exchange="none"),
    "xattn_no_adapter": _set(exchange="xattn"),
    "xattn_then_adapter": _set(exchange="xattn_adapter"),
    # Table 1(g): one direction only
    "s2t_only": _set(t2s=False),
    "t2s_only": _set(s2t=False),
    # Table 8
    "no_bcast_pos": _set(bcast_pos_embed=False),
}


def preset_config(name: str, overrides: dict[str, Any] | list[str] | None = None,
                  ablation: str | None = None) -> CASTConfig:
    """A preset, then an ablation, then overrides (dotted keys or `key=value` strings)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ConfigError(f"unknown ablation {ablation!r}; ablations: {', '.join(ABLATIONS)}")
        cfg = ABLATIONS[ablation](cfg)
    return apply_overrides(cfg, overrides) if overrides else dataclasses.replace(cfg)
