"""A CAST from two pretrained experts, each described by its own checkpoint's config.

`from_experts(spatial="google/siglip2-base-patch16-224", temporal="MCG-NJU/videomae-base",
heads={"action": 400})` reads each transformers folder's (or hub id's) `config.json` for the
architecture and `preprocessor_config.json` for the pixel statistics, aligns the two token grids, builds
the model and loads both experts. Families: CLIP, SigLIP / SigLIP 2 FixRes, DINOv2 (with or without
registers), VideoMAE, VideoMAE V2 (the hub's OpenGVLab/VideoMAEv2-* folders) and V-JEPA 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..config_utils import apply_overrides
from ..models.cast import CAST, CASTConfig, HeadConfig
from ..models.experts import ExpertConfig
from ..normalization import PIXEL_STATS
from .io import WeightsError, resolve
from .loading import load_experts

# transformers model_type -> (our arch, its pixel statistics, transformers' defaults for absent keys)
_B16 = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "clip_vision_model": ("clip", "clip", {**_B16, "intermediate_size": 3072, "patch_size": 32,
                                           "hidden_act": "quick_gelu"}),
    "siglip_vision_model": ("siglip", "siglip", {**_B16, "intermediate_size": 3072, "patch_size": 16,
                                                 "hidden_act": "gelu_pytorch_tanh", "vision_use_head": True}),
    "dinov2": ("dinov2", "imagenet", {**_B16, "mlp_ratio": 4, "patch_size": 14, "hidden_act": "gelu",
                                      "use_swiglu_ffn": False}),
    "dinov2_with_registers": ("dinov2", "imagenet", {**_B16, "mlp_ratio": 4, "patch_size": 16,
                                                     "hidden_act": "gelu", "use_swiglu_ffn": False,
                                                     "num_register_tokens": 4}),
    "videomae": ("videomae", "imagenet", {**_B16, "intermediate_size": 3072, "patch_size": 16, "tubelet_size": 2,
                                          "hidden_act": "gelu"}),
    "vjepa2": ("vjepa2", "imagenet", {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                      "mlp_ratio": 4.0, "patch_size": 16, "tubelet_size": 2, "crop_size": 256,
                                      "hidden_act": "gelu"}),
}
_NESTED = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}  # whole image-text models
_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: cannot be read as JSON: {err}") from err


def _pixel_stats(folder: Path, default: str) -> str:
    """The PIXEL_STATS name matching the folder's preprocessor_config.json (the family's when absent)."""
    file = folder / "preprocessor_config.json"
    if not file.exists():
        return default
    pre = _read_json(file)
    found = [float(v) for v in (*pre.get("image_mean", ()), *pre.get("image_std", ()))]
    for name, (mean, std) in PIXEL_STATS.items():
        if len(found) == 6 and all(abs(a - b) < 1e-4 for a, b in zip((*mean, *std), found, strict=True)):
            return name
    raise WeightsError(f"{file}: pixel statistics (mean, std) {found} are none of "
                       f"{', '.join(PIXEL_STATS)}")


# VideoMAE V2 variants that the published checkpoints do not use and our VideoMAE expert does not compute.
_V2_VARIANTS = {"cos_attn": "cosine attention", "use_learnable_pos_emb": "learned positions",
                "init_values": "LayerScale"}


def _videomae_v2(raw: dict, file: Path) -> dict:
    """The hub's VideoMAE V2 folders (OpenGVLab/VideoMAEv2-Base, -Large, -Huge, -giant, loaded elsewhere
    with remote code) describe the VisionTransformer of models/modeling_finetune.py under `model_config`,
    in its own argument names: the same architecture as VideoMAE, in transformers' names. The MLP width
    is int(embed_dim * mlp_ratio), as that class computes it (ViT-g: 1408 x 48/11 = 6144)."""
    m = raw.get("model_config")
    if not isinstance(m, dict):
        raise WeightsError(f"{file}: a VideoMAE V2 config without its model_config")
    variant = next((k for k in _V2_VARIANTS if m.get(k)), None)
    if variant is not None:
        raise WeightsError(f"{file}: model_config.{variant} = {m[variant]!r}: {_V2_VARIANTS[variant]} is not what "
                           "our VideoMAE expert computes")
    if m.get("qkv_bias") is False or float(m.get("layer_norm_eps", 1e-6)) != 1e-6:
        raise WeightsError(f"{file}: model_config without q/v biases or with a LayerNorm eps other than 1e-6 is not "
                           "the published VideoMAE V2 architecture")
    try:
        width, ratio = int(m["embed_dim"]), float(m.get("mlp_ratio", 4.0))
        return {"model_type": "videomae", "hidden_size": width, "num_hidden_layers": int(m["depth"]),
                "num_attention_heads": int(m["num_heads"]), "intermediate_size": int(width * ratio),
                "patch_size": int(m.get("patch_size", 16)), "tubelet_size": int(m.get("tubelet_size", 2)),
                "hidden_act": "gelu"}
    except KeyError as err:
        raise WeightsError(f"{file}: model_config has no {err.args[0]!r}") from err


def read_expert(source: str | os.PathLike) -> ExpertConfig:
    """The ExpertConfig of a transformers folder or hub id, from its config.json."""
    folder = resolve(source)
    file = folder / "config.json"
    if not folder.is_dir() or not file.exists():
        raise WeightsError(f"{source}: from_experts reads the architecture from a transformers folder's config.json; "
                           "for a single checkpoint file build a CASTConfig and call load_experts")
    raw = _read_json(file)
    model_type = raw.get("model_type", "")
    if model_type in _NESTED:
        raw, model_type = {**raw.get("vision_config", {}), "model_type": _NESTED[model_type]}, _NESTED[model_type]
    if model_type.lower().startswith("videomaev2"):
        raw, model_type = _videomae_v2(raw, file), "videomae"
    if model_type not in FAMILIES:
        raise WeightsError(f"{file}: model_type {model_type!r} is not a supported expert "
                           f"({', '.join(sorted(FAMILIES))})")
    arch, stats, defaults = FAMILIES[model_type]
    c = {**defaults, **raw}
    if c["hidden_act"] not in _ACTS or _ACTS[c["hidden_act"]] != ExpertConfig(arch).spec.act:
        raise WeightsError(f"{file}: hidden_act {c['hidden_act']!r} is not what our {arch} expert computes")
    if c.get("use_swiglu_ffn"):
        raise WeightsError(f"{file}: DINOv2 with a SwiGLU MLP (ViT-g) is not supported")
    if c.get("vision_use_head") is False:
        raise WeightsError(f"{file}: SigLIP without its attention-pooling head is not supported")
    width = c["hidden_size"]
    mlp_ratio = c["intermediate_size"] / width if "intermediate_size" in c else float(c["mlp_ratio"])
    return ExpertConfig(arch=arch, width=width, depth=c["num_hidden_layers"], heads=c["num_attention_heads"],
                        mlp_ratio=mlp_ratio, patch_size=c["patch_size"], tubelet_size=c.get("tubelet_size", 2),
                        norm=_pixel_stats(folder, stats), num_registers=c.get("num_register_tokens", 0),
                        img_size=c.get("crop_size"))  # V-JEPA 2's rotary grid is its crop's


def _heads(heads) -> list[HeadConfig]:
    if isinstance(heads, int):
        return [HeadConfig("action", heads, "fused")]
    if isinstance(heads, dict):
        return [HeadConfig(name, n, "fused") for name, n in heads.items()]
    return list(heads)


def _align(spatial: ExpertConfig, temporal: ExpertConfig, img_size: int) -> tuple[ExpertConfig, ExpertConfig]:
    """Give both experts the same grid over the same field of view. The grid is set by an expert whose
    side is its own (V-JEPA 2: its rotary grid is its crop's), else by the temporal expert's patch on the
    crop (else the spatial's); the other expert sees the crop resized to grid x its patch (patch 14 at
    224 px = patch 16 at 256 px = 16 x 16)."""
    fixed = [e for e in (temporal, spatial) if e.img_size is not None]  # an expert whose side is its own
    base = fixed[0] if fixed else temporal if img_size % temporal.patch_size == 0 else spatial
    if not fixed and img_size % base.patch_size:
        raise WeightsError(f"a {img_size} px crop is a multiple of neither expert's patch (spatial {spatial.arch} "
                           f"{spatial.patch_size}, temporal {temporal.arch} {temporal.patch_size})")
    grid = (base.img_size or img_size) // base.patch_size

    def sized(e: ExpertConfig) -> ExpertConfig:
        side = grid * e.patch_size
        return dataclasses.replace(e, img_size=None if side == img_size else side)

    return sized(spatial), sized(temporal)


def experts_config(spatial, temporal, heads, num_frames: int = 16, img_size: int = 224,
                   overrides: dict[str, Any] | list[str] | None = None) -> CASTConfig:
    """The CASTConfig of two checkpoints (folders or hub ids), read from their own configs; no weights."""
    s, t = _align(read_expert(spatial), read_expert(temporal), img_size)
    try:
        cfg = CASTConfig(spatial=s, temporal=t, heads=_heads(heads), num_frames=num_frames, img_size=img_size)
    except ValueError as err:
        raise WeightsError(f"{spatial} + {temporal}: {err}") from err
    return apply_overrides(cfg, overrides) if overrides else cfg


def paired_config(base: CASTConfig, spatial, temporal) -> CASTConfig:
    """`base` (a preset: heads, frames, crop, exchange and training settings) with its two experts
    replaced by two checkpoints', read from their own configs and aligned on base's crop. This is what
    `model.from_experts: true` does with `weights.spatial` / `weights.temporal` in a training config."""
    s, t = _align(read_expert(spatial), read_expert(temporal), base.img_size)
    try:
        return dataclasses.replace(base, spatial=s, temporal=t)
    except ValueError as err:
        raise WeightsError(f"{spatial} + {temporal}: {err}") from err


def from_experts(spatial, temporal, heads, num_frames: int = 16, img_size: int = 224,
                 overrides: dict[str, Any] | list[str] | None = None, trusted: bool = False) -> CAST:
    """A CAST whose experts are two pretrained checkpoints (transformers folders or hub ids), frozen
    and loaded; the architecture comes from each checkpoint's own config (see `experts_config`)."""
    model = CAST(experts_config(spatial, temporal, heads, num_frames, img_size, overrides))
    load_experts(model, spatial=spatial, temporal=temporal, trusted=trusted)
    return model
