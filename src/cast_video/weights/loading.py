"""Reading checkpoints from disk or the hub, loading them into experts or a whole CAST, and our format."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config_utils import from_dict, to_dict
from ..models.cast import CAST, CASTConfig, HeadConfig
from ..models.experts import ExpertConfig, ViTExpert
from ..models.layers import interpolate_grid
from .formats import EXPERT_CONVERTERS, EXPERT_FORMATS, detect_format, from_official_cast

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state")
_ARCH_OF_FORMAT = {"openai_clip": "clip", "hf_clip": "clip", "videomae": "videomae", "hf_videomae": "videomae"}


class WeightsError(ValueError):
    """A checkpoint that does not fit: the message names the file and the key."""


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


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """Checkpoints nest the weights under 'model', 'module' (DeepSpeed) or 'state_dict'."""
    for key in _CONTAINER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return _unwrap(obj[key], path)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: no state dict found (looked under {', '.join(_CONTAINER_KEYS)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(source: str | os.PathLike, trusted: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """A flat state dict from a file, a transformers-style directory, or a hub id (where a network is).

    Pickled files are read with `weights_only=True`; a file that needs arbitrary objects (old
    checkpoints that saved argparse namespaces) needs `trusted=True`. TorchScript archives (OpenAI
    CLIP) are loaded with `torch.jit.load` on the CPU and only their state dict is kept.
    """
    path = Path(source)
    if not path.exists():
        if isinstance(source, str) and _HUB_ID.fullmatch(source):
            from huggingface_hub import snapshot_download

            try:
                path = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
            except Exception as err:  # offline, unknown repo, ...
                raise WeightsError(f"{source}: not a local path, and the hub could not provide it: {err}") from err
        else:
            raise FileNotFoundError(f"{source}: no such file or directory")
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return read_state_dict(path / name, trusted)[0], str(path)
        raise WeightsError(f"{path}: a directory without model.safetensors or pytorch_model.bin")
    if path.suffix == ".safetensors":
        return load_file(str(path)), str(path)
    if _is_torchscript(path):
        module = torch.jit.load(str(path), map_location="cpu")
        return {k: v for k, v in module.state_dict().items()}, str(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as err:
        if trusted:
            raise WeightsError(f"{path}: cannot be read: {err}") from err
        raise WeightsError(f"{path}: cannot be read with weights_only=True ({type(err).__name__}); if you "
                           "trust the file, pass trusted=True (--trusted on the command line)") from err
    return _unwrap(obj, path), str(path)


def _resize_clip_positions(pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bicubic resize of CLIP's position grid to another image size; the class position is kept."""
    side = int(math.isqrt(target.shape[0] - 1))
    return torch.cat([pos[:1], interpolate_grid(pos[1:], (side, side))])


def load_expert(expert: ViTExpert, source, format: str | None = None, strict: bool = True,
                trusted: bool = False) -> LoadReport:
    """Load one expert from any supported format; see `LoadReport` for what is returned."""
    sd, where = read_state_dict(source, trusted)
    fmt = format or detect_format(sd)
    if fmt not in EXPERT_FORMATS:
        raise WeightsError(f"{where}: format {fmt!r} is not an expert format ({', '.join(EXPERT_FORMATS)})")
    arch = _ARCH_OF_FORMAT.get(fmt)
    if arch is not None and arch != expert.cfg.arch:
        raise WeightsError(f"{where}: {fmt} weights are a {arch} ViT, but this expert is {expert.cfg.arch}")
    ours, extras = EXPERT_CONVERTERS[fmt](sd)
    expected = expert.state_dict()
    report = LoadReport(str(source), fmt, ignored=extras)
    report.unexpected = [k[1:] for k in ours if k.startswith("?")] + [
        k for k in ours if not k.startswith("?") and k not in expected
    ]
    state = {}
    for key, value in ours.items():
        if key not in expected:
            continue
        if key == "pos_embed" and expert.cfg.arch == "clip" and value.shape != expected[key].shape:
            value = _resize_clip_positions(value, expected[key])
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


def load_experts(model: CAST, spatial=None, temporal=None, format: str | None = None, strict: bool = True,
                 trusted: bool = False) -> dict[str, LoadReport]:
    """Load the spatial and/or temporal expert; the sources are remembered for `save_pretrained`."""
    reports = {}
    for role, source in (("spatial", spatial), ("temporal", temporal)):
        if source is not None:
            reports[role] = load_expert(getattr(model, role), source, format, strict, trusted)
            model.expert_sources[role] = str(source)
    return reports


def save_pretrained(model: CAST, directory: str | os.PathLike, full: bool = False) -> Path:
    """`config.json` + `model.safetensors`: by default only what CAST trains, plus where the experts
    came from; `full=True` stores every weight. Files are written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = {n for n, _ in model.trainable_parameters()} if not full else None
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if names is None or k in names}
    meta = {"format": "cast-video", "full": full, "experts": dict(model.expert_sources),
            "config": to_dict(model.config)}
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as tmp:
        save_file(state, tmp.name)
    os.replace(tmp.name, directory / "model.safetensors")
    (directory / "config.json.tmp").write_text(json.dumps(meta, indent=2))
    os.replace(directory / "config.json.tmp", directory / "config.json")
    return directory


def from_pretrained(source: str | os.PathLike, load_expert_weights: bool = True) -> CAST:
    """A CAST saved by `save_pretrained`, from a directory or a hub id."""
    path = Path(source)
    if not path.exists() and isinstance(source, str) and _HUB_ID.fullmatch(source):
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(source))
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path}: no config.json (is this a directory written by save_pretrained?)")
    meta = json.loads(config_file.read_text())
    model = CAST(from_dict(CASTConfig, meta["config"]))
    if not meta.get("full") and load_expert_weights:
        experts = meta.get("experts", {})
        load_experts(model, spatial=experts.get("spatial"), temporal=experts.get("temporal"))
    state = load_file(str(path / "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise WeightsError(f"{path}: unexpected keys {result.unexpected_keys[:8]}")
    if meta.get("full") and result.missing_keys:
        raise WeightsError(f"{path}: missing keys {result.missing_keys[:8]}")
    return model


def _official_config(sd: dict[str, torch.Tensor], preset: str | None, num_heads: int | None) -> CASTConfig:
    """The config an official checkpoint was trained with, read from its shapes. The head count is
    the one thing shapes cannot tell; ViTs use 64 channels per head (12 heads for ViT-B)."""
    from ..models.presets import preset_config

    width, _, patch, _ = sd["clip_conv1.weight"].shape
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    grid = math.isqrt(sd["clip_positional_embedding"].shape[0] - 1)
    frames = 2 * sd["blocks.0.t2s_cross.clip_time_pos"].shape[0]
    if "head_verb.weight" in sd:
        heads = [HeadConfig("verb", sd["head_verb.weight"].shape[0], "temporal"),
                 HeadConfig("noun", sd["head_noun.weight"].shape[0], "spatial")]
    else:
        heads = [HeadConfig("action", sd["head.weight"].shape[0], "fused")]
    shape = dict(width=width, depth=depth, heads=num_heads or max(1, width // 64), patch_size=patch)
    found = CASTConfig(spatial=ExpertConfig("clip", **shape), temporal=ExpertConfig("videomae", **shape),
                       heads=heads, num_frames=frames, img_size=grid * patch,
                       bcast_dim=sd["blocks.0.cross_s_down.weight"].shape[0])
    if preset is None:
        return found
    cfg = preset_config(preset)
    checks = {"width": (cfg.spatial.width, width), "depth": (cfg.depth, depth), "frames": (cfg.num_frames, frames),
              "image size": (cfg.img_size, grid * patch), "bottleneck": (cfg.bottleneck_dim, found.bcast_dim),
              "heads": ([(h.name, h.num_classes) for h in cfg.heads], [(h.name, h.num_classes) for h in heads])}
    for what, (want, got) in checks.items():
        if want != got:
            raise WeightsError(f"preset {preset} has {what} {want}, the checkpoint {got}")
    return cfg


def load_official_cast(source, preset: str | None = None, trusted: bool = False,
                       num_heads: int | None = None) -> CAST:
    """A CAST from the official repository's fine-tuned checkpoints (EK100, SSV2, K400 model zoo).

    The architecture is read from the checkpoint's shapes, or checked against `preset` when given.
    Every weight must find its place: the result computes what the official model computes.
    """
    sd, where = read_state_dict(source, trusted)
    if detect_format(sd) != "official_cast":
        raise WeightsError(f"{where}: not an official CAST checkpoint")
    cfg = _official_config(sd, preset, num_heads)
    model = CAST(cfg)
    ours, _ = from_official_cast(sd)
    heads = {}
    for key in [k for k in ours if k.startswith(("head", "noun_last_Adapter", "verb_last_Adapter"))]:
        value = ours.pop(key)
        name, leaf = key.rsplit(".", 1)
        if name == "head_verb":
            heads[f"heads.verb.{leaf}"] = value
        elif name == "head_noun":
            heads[f"heads.noun.{leaf}"] = value
        elif name == "head":
            heads[f"heads.{cfg.heads[0].name}.{leaf}"] = value
        else:
            fuse = "fuse_s" if name.startswith("noun_last_Adapter") else "fuse_t"
            heads[f"{fuse}.{name.rsplit('.', 1)[1].removeprefix('D_')}.{leaf}"] = value
    ours.update(heads)
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
