"""Reading checkpoints from disk or the hub, loading them into experts or a whole CAST, and our format."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save

from ..config_utils import ConfigError, from_dict, to_dict
from ..files import atomic_write_bytes, atomic_write_json
from ..models.cast import CAST, CASTConfig, HeadConfig
from ..models.experts import ExpertConfig, ViTExpert
from ..models.layers import interpolate_grid
from .formats import (
    ARCH_OF_FORMAT,
    EXPERT_CONVERTERS,
    EXPERT_FORMATS,
    OFFICIAL_HEADS,
    detect_format,
    from_official_cast,
)
from .io import HUB_ID, WeightsError, hub_snapshot, read_json, read_safetensors, read_state_dict


@dataclass
class LoadReport:
    """What happened to every key: loaded, missing (kept as initialised), unexpected, known extras."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source} ({self.format}): {len(self.loaded)} loaded, {len(self.ignored)} known extras ignored"]
        if self.missing:
            lines.append(f"  missing, kept as initialised: {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {', '.join(self.unexpected)}")
        return "\n".join(lines)


def _resize_positions(pos: torch.Tensor, target: torch.Tensor, expert: ViTExpert) -> torch.Tensor:
    """Bicubic resize of a learned position grid to this expert's grid, as the expert's own library
    resizes it (DINOv2 with antialiasing); a class position is kept as it is."""
    keep = int(expert.cfg.spec.class_position)
    side = int(math.isqrt(target.shape[0] - keep))
    return torch.cat([pos[:keep], interpolate_grid(pos[keep:], (side, side), antialias=expert.cfg.resize_antialias)])


def _select_cast_expert(sd: dict[str, torch.Tensor], expert: ViTExpert, role: str | None, where: str) -> dict:
    """One expert out of a whole-CAST file of ours: by role, or by architecture when the role is not given."""
    roles = [r for r in ("spatial", "temporal") if f"{r}.patch_embed.weight" in sd]
    if not roles:
        return sd
    ndim = 4 if expert.cfg.spec.embed == "frames" else 5  # Conv2d frames or Conv3d tubes
    if role is None:
        matching = [r for r in roles if sd[f"{r}.patch_embed.weight"].ndim == ndim]
        if len(matching) != 1:
            raise WeightsError(f"{where}: a whole CAST file; say which expert to take (role='spatial' or 'temporal')")
        role = matching[0]
    if role not in roles:
        raise WeightsError(f"{where}: a whole CAST file without {role} expert weights")
    return {k.removeprefix(f"{role}."): v for k, v in sd.items() if k.startswith(f"{role}.")}


def load_expert(expert: ViTExpert, source, format: str | None = None, strict: bool = True,
                trusted: bool = False, role: str | None = None) -> LoadReport:
    """Load one expert from any supported format; see `LoadReport` for what is returned.

    Nothing is copied into the expert unless every check passes, so a failed load leaves it untouched.
    """
    sd, where = read_state_dict(source, trusted)
    fmt = format or detect_format(sd, where)
    if fmt not in EXPERT_FORMATS:
        raise WeightsError(f"{where}: format {fmt!r} is not an expert format ({', '.join(EXPERT_FORMATS)})")
    arch = ARCH_OF_FORMAT.get(fmt)
    if arch is not None and arch != expert.cfg.arch:
        raise WeightsError(f"{where}: {fmt} weights are a {arch} ViT, but this expert is {expert.cfg.arch}")
    if fmt == "cast_video":
        sd = _select_cast_expert(sd, expert, role, where)
    try:
        ours, extras = EXPERT_CONVERTERS[fmt](sd)
    except WeightsError as err:  # a converter names the key; the file is named here
        raise WeightsError(f"{where}: {err}") from err
    expected = expert.state_dict()
    report = LoadReport(str(source), fmt, ignored=sorted(extras))
    report.unexpected = sorted([k[1:] for k in ours if k.startswith("?")] + [
        k for k in ours if not k.startswith("?") and k not in expected
    ])
    state = {}
    for key, value in ours.items():
        if key not in expected:
            continue
        if key == "pos_embed" and expert.cfg.spec.positions == "learned" and value.shape != expected[key].shape:
            value = _resize_positions(value, expected[key], expert)
        if value.shape != expected[key].shape:
            raise WeightsError(f"{where}: {key}: checkpoint has shape {tuple(value.shape)}, "
                               f"the model expects {tuple(expected[key].shape)}")
        state[key] = value
    report.loaded = sorted(state)
    report.missing = sorted(set(expected) - set(state))
    if strict and report.unexpected:
        raise WeightsError(f"{where}: unexpected keys {report.unexpected[:8]} (pass strict=False to ignore)")
    frozen_missing = [k for k in report.missing if not k.startswith("norm.")]
    if strict and frozen_missing:
        raise WeightsError(f"{where}: the checkpoint lacks {frozen_missing[:8]} (pass strict=False to keep them "
                           "as initialised)")
    expert.load_state_dict(state, strict=False)
    return report


def _reference(source) -> str:
    """How config.json names an expert source: an absolute path, or the hub id as given."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


def load_experts(model: CAST, spatial=None, temporal=None, format: str | dict[str, str] | None = None,
                 strict: bool = True, trusted: bool = False) -> dict[str, LoadReport]:
    """Load the spatial and/or temporal expert; `format` is one name or {role: name}. The sources are
    remembered, so `save_pretrained` can refer to them instead of storing the frozen weights."""
    reports = {}
    for role, source in (("spatial", spatial), ("temporal", temporal)):
        if source is None:
            continue
        fmt = format.get(role) if isinstance(format, dict) else format
        report = load_expert(getattr(model, role), source, fmt, strict, trusted, role)
        reports[role] = report
        model.expert_sources[role] = {"source": _reference(source), "format": report.format}
    return reports


def save_pretrained(model: CAST, directory: str | os.PathLike, full: bool = False) -> Path:
    """`config.json` + `model.safetensors`, written atomically.

    By default the file holds what CAST trains, and config.json names where each frozen expert came
    from; an expert that was never loaded from a source (random, or changed in place) is stored whole,
    so that `from_pretrained` always rebuilds the same model. `full=True` stores every weight.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    referenced = {} if full else {r: s for r, s in model.expert_sources.items() if model.config.freeze_experts}
    keep = {n for n, _ in model.trainable_parameters()}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if full or k in keep or k.split(".", 1)[0] not in referenced}
    meta = {"format": "cast-video", "full": full, "experts": referenced, "config": to_dict(model.config)}
    atomic_write_bytes(directory / "model.safetensors", save(state))
    atomic_write_json(directory / "config.json", meta)
    return directory


def _model_config_file(path: Path) -> Path:
    """`path/config.json`, or an error that names the folder inside `path` that holds a model (a run folder)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise WeightsError(f"{path}: a model is a folder written by save_pretrained or train "
                           "(config.json + model.safetensors), not a file")
    if (path / "config.json").exists():
        return path / "config.json"
    inside = [c.parent for pattern in ("*/config.json", "*/*/config.json") for c in sorted(path.glob(pattern))]
    models = [str(d) for d in inside if (d / "model.safetensors").exists()]
    if models:
        more = f" (and {len(models) - 1} more)" if len(models) > 1 else ""
        raise WeightsError(f"{path}: no model in this folder itself, but {models[0]} holds one{more}; pass that folder")
    raise WeightsError(f"{path}: no config.json: not a folder written by save_pretrained or train")


def from_pretrained(source: str | os.PathLike, load_expert_weights: bool = True) -> CAST:
    """A CAST saved by `save_pretrained`, from a directory or a hub id. Experts stored by reference
    are loaded from their recorded sources unless `load_expert_weights=False` (then they stay random)."""
    path = Path(source)
    if not path.exists() and isinstance(source, str) and HUB_ID.fullmatch(source):
        path = hub_snapshot(source, ["config.json", "model.safetensors"])
    config_file = _model_config_file(path)
    meta = read_json(config_file)
    if meta.get("format") != "cast-video" or not isinstance(meta.get("config"), dict):
        raise WeightsError(f"{config_file}: not written by cast-video's save_pretrained")
    try:
        model = CAST(from_dict(CASTConfig, meta["config"]))
    except ConfigError as err:
        raise WeightsError(f"{config_file}: {err}") from err
    experts = meta.get("experts", {})
    if load_expert_weights:
        for role, ref in experts.items():
            try:
                load_experts(model, format={role: ref["format"]}, **{role: ref["source"]})
            except (FileNotFoundError, WeightsError) as err:
                raise WeightsError(f"{config_file}: the {role} expert is stored by reference and its source "
                                   f"cannot be loaded ({err}); save with full=True to carry it, or pass "
                                   "load_expert_weights=False") from err
    state = read_safetensors(path / "model.safetensors")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise WeightsError(f"{path}: unexpected keys {result.unexpected_keys[:8]}")
    missing = [k for k in result.missing_keys if k.split(".", 1)[0] not in experts]
    if missing:
        raise WeightsError(f"{path}: model.safetensors lacks {missing[:8]}")
    return model


def push_to_hub(model: CAST, repo_id: str, full: bool = False, **kwargs) -> str:
    """Upload `save_pretrained`'s files to the Hugging Face Hub (needs a network and a token); returns
    the commit URL. `kwargs` go to `HfApi.create_repo` (e.g. `private=True`)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, full=full)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp).commit_url


def _official_shape(sd: dict[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise WeightsError(f"{where}: an official CAST checkpoint must have {key}")
    return tuple(sd[key].shape)


def _mismatches(cfg: CASTConfig, found: CASTConfig, num_heads: int | None) -> list[str]:
    def heads(c: CASTConfig):
        return [(h.name, h.num_classes, h.source) for h in c.heads]

    checks = {"experts": ((cfg.spatial.arch, cfg.temporal.arch), (found.spatial.arch, found.temporal.arch)),
              "width": (cfg.spatial.width, found.spatial.width), "depth": (cfg.depth, found.depth),
              "patch size": (cfg.spatial.patch_size, found.spatial.patch_size),
              "frames": (cfg.num_frames, found.num_frames), "image size": (cfg.img_size, found.img_size),
              "bottleneck": (cfg.bottleneck_dim, found.bcast_dim), "heads": (heads(cfg), heads(found)),
              "attention heads": (cfg.spatial.heads, num_heads or cfg.spatial.heads)}
    return [f"{what} {want} (checkpoint: {got})" for what, (want, got) in checks.items() if want != got]


def _official_config(sd: dict[str, torch.Tensor], preset: str | None, num_heads: int | None,
                     where: str) -> CASTConfig:
    """The config an official checkpoint was trained with, read from its shapes.

    A preset whose shapes all match is used as is (it also carries the training settings, such as
    drop_path); otherwise a config is built from the shapes. The attention head count is the one thing
    shapes cannot tell: `num_heads`, or 64 channels per head as in every CLIP and VideoMAE ViT.
    """
    from ..models.presets import PRESETS, preset_config

    width, _, patch, _ = _official_shape(sd, "clip_conv1.weight", where)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = math.isqrt(_official_shape(sd, "clip_positional_embedding", where)[0] - 1)
    frames = 2 * _official_shape(sd, "blocks.0.t2s_cross.clip_time_pos", where)[0]
    split = {name: key for key, name in OFFICIAL_HEADS.items() if name is not None}  # {"verb": "head_verb", ...}
    if any(f"{key}.weight" in sd for key in split.values()):
        heads = [HeadConfig("verb", _official_shape(sd, f"{split['verb']}.weight", where)[0], "temporal"),
                 HeadConfig("noun", _official_shape(sd, f"{split['noun']}.weight", where)[0], "spatial")]
    else:
        heads = [HeadConfig("action", _official_shape(sd, "head.weight", where)[0], "fused")]
    shape = dict(width=width, depth=depth, heads=num_heads or max(1, width // 64), patch_size=patch)
    found = CASTConfig(spatial=ExpertConfig("clip", **shape), temporal=ExpertConfig("videomae", **shape),
                       heads=heads, num_frames=frames, img_size=grid * patch,
                       bcast_dim=_official_shape(sd, "blocks.0.cross_s_down.weight", where)[0])
    if preset is not None:
        problems = _mismatches(preset_config(preset), found, num_heads)
        if problems:
            raise WeightsError(f"{where}: does not fit preset {preset}: it has {'; '.join(problems)}")
        return preset_config(preset)
    for name in PRESETS:
        if not _mismatches(preset_config(name), found, num_heads):
            return preset_config(name)
    return found


def load_official_cast(source, preset: str | None = None, trusted: bool = False,
                       num_heads: int | None = None) -> CAST:
    """A CAST from the official repository's fine-tuned checkpoints (EK100, SSV2, K400 model zoo).

    The architecture is read from the checkpoint's shapes, or checked against `preset` when given.
    Every weight must find its place: the result computes what the official model computes.
    """
    sd, where = read_state_dict(source, trusted)
    if detect_format(sd, where) != "official_cast":
        raise WeightsError(f"{where}: not an official CAST checkpoint")
    cfg = _official_config(sd, preset, num_heads, where)
    model = CAST(cfg)
    ours, _ = from_official_cast(sd, single_head=cfg.heads[0].name)
    unknown = [k[1:] for k in ours if k.startswith("?")]
    if unknown:
        raise WeightsError(f"{where}: keys with no place in CAST: {unknown[:8]}")
    expected = model.state_dict()
    for key, value in ours.items():
        if key in expected and value.shape != expected[key].shape:
            raise WeightsError(f"{where}: {key}: checkpoint has shape {tuple(value.shape)}, "
                               f"the model expects {tuple(expected[key].shape)}")
    result = model.load_state_dict(ours, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(f"{where}: missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}")
    return model
