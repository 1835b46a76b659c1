"""What CAST looked at in one clip: cross-attention maps of every B-CAST layer, Grad-CAM per head, top-k.

`explain_clip` samples one clip the way prediction does (uniform segments over the whole video, or
around `clip_at` seconds), takes the centre crop the model sees, runs the model once with capture on,
and returns everything the report (`engine/explain_page.py`) draws, with the mapping from each token
back to the original video's frame numbers and pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import DataConfig, build_gpu_augment, read_frames, video_info
from ..data.dataset import test_crops
from ..data.sampling import segment_indices
from ..errors import ConfigError
from ..models import CAST


@dataclass
class Explanation:
    """One clip seen by one model. `frames` (T, S, S, 3) uint8 are the spatial expert's frames (clip frame
    2t+1) after the crop; maps are on the CPU, batch dimension removed."""

    video: str
    frames: torch.Tensor
    mapping: dict
    top: dict[str, list[dict]]
    windows: dict[str, str]  # direction -> window shape
    maps: dict[int, dict[str, torch.Tensor]]  # layer -> direction -> map (H, ...) in capture's layouts
    relevance: dict[str, dict[str, torch.Tensor]]  # head -> expert -> (T, N)
    targets: dict[str, int]
    grid: int
    heads: int = 0
    names: dict[str, list[str]] = field(default_factory=dict)


def clip_indices(num_frames: int, fps: float, clip_frames: int, clip_at: float | None, clip_len: float) -> list[int]:
    """The 2T frame numbers of the clip: prediction's centre segment view over the whole video, or the same
    over `clip_len` seconds centred on `clip_at` (clamped into the video)."""
    if clip_at is None:
        return segment_indices(num_frames, clip_frames, False, view=1, num_views=2)[0]
    if clip_at < 0 or clip_at * fps >= num_frames:
        raise ConfigError(f"--clip-at {clip_at}s is outside the video (0 to {num_frames / fps:.2f}s)")
    span = max(1, min(num_frames, round(clip_len * fps)))
    start = min(max(0, round(clip_at * fps) - span // 2), num_frames - span)
    return [start + i for i in segment_indices(span, clip_frames, False, view=1, num_views=2)[0]]


def crop_mapping(height: int, width: int, size: int) -> dict:
    """Where the centre crop of `test_crops(frames, size, size, 1)` lies in the original frame."""
    scale = size / min(height, width)
    nh, nw = max(size, round(height * scale)), max(size, round(width * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    sy, sx = height / nh, width / nw
    return {"original_size": [height, width], "resized_to": [nh, nw], "crop_top_left": [top, left], "crop_size": size,
            "box_in_original": [round(left * sx, 2), round(top * sy, 2), round((left + size) * sx, 2),
                                round((top + size) * sy, 2)]}


def _class_index(target: str, names: list[str] | None, num_classes: int) -> int:
    if names and target in names:
        return names.index(target)
    if target.isdigit() and int(target) < num_classes:
        return int(target)
    raise ConfigError(f"--target {target!r} is not a class name or index of this head")


def resolve_targets(model: CAST, names: dict[str, list[str]], target: str | None) -> dict[str, int | None]:
    """--target NAME (or HEAD=NAME) -> {head: class index}; heads it does not name use their prediction."""
    if target is None:
        return {}
    heads = {h.name: h.num_classes for h in model.config.heads}
    if "=" in target:
        head, cls = target.split("=", 1)
        if head not in heads:
            raise ConfigError(f"--target: no head {head!r}; heads: {', '.join(heads)}")
        return {head: _class_index(cls, names.get(head), heads[head])}
    found = {h: names[h].index(target) for h in heads if target in names.get(h, [])}
    if not found:
        if len(heads) == 1:
            head = next(iter(heads))
            return {head: _class_index(target, names.get(head), heads[head])}
        raise ConfigError(f"--target {target!r} is no class of any head; use HEAD=NAME or HEAD=INDEX")
    return found


def _top(probs: torch.Tensor, names: list[str] | None, k: int) -> list[dict]:
    values, ids = probs.topk(min(k, probs.numel()))
    return [{"class": int(i), "name": names[i] if names and i < len(names) else str(int(i)), "score": float(v)}
            for v, i in zip(values, ids, strict=True)]


def explain_clip(model: CAST, path: str | Path, names: dict[str, list[str]] | None = None,
                 clip_at: float | None = None, clip_len: float = 2.0, target: str | None = None, topk: int = 5,
                 device: str = "cpu") -> Explanation:
    cfg = model.config
    names = names or {}
    model = model.to(device).eval()
    info = video_info(path)
    indices = clip_indices(info.num_frames, info.fps, cfg.num_frames, clip_at, clip_len)
    frames = read_frames(path, indices)  # (2T, H, W, 3)
    view = test_crops(frames, cfg.img_size, cfg.img_size, 1)[0]  # (3, 2T, S, S) uint8
    data = DataConfig(num_frames=cfg.num_frames, input_size=cfg.img_size, short_side=cfg.img_size, norm=cfg.input_norm)
    x = build_gpu_augment(data).eval().to(device).normalize(view[None].to(device))  # (1, 3, 2T, S, S)
    with torch.no_grad():
        logits, maps = model.cross_attention_maps(x)
    targets = resolve_targets(model, names, target)
    _, relevance = model.relevance_maps(x, targets)
    chosen = {h: targets.get(h, int(_scores(logits[h]).argmax())) for h in logits}
    top = {h: _top(_scores(logits[h]).softmax(-1), names.get(h), topk) for h in logits}
    mapping = {"video": str(path), "fps": info.fps, "num_frames": info.num_frames, "clip_frames": indices,
               "spatial_frames": indices[1::2], "temporal_tubes": [indices[i:i + 2] for i in range(0, len(indices), 2)],
               "patch_size": cfg.img_size // model.spatial.grid, "grid": model.spatial.grid,  # crop pixels per patch
               **crop_mapping(frames.shape[1], frames.shape[2], cfg.img_size)}
    return Explanation(
        video=str(path), frames=view[:, 1::2].permute(1, 2, 3, 0).contiguous(), mapping=mapping, top=top,
        windows={"t2s": cfg.t2s_window, "s2t": cfg.s2t_window},
        maps={layer: {d: m[0].cpu() for d, m in dirs.items()} for layer, dirs in maps.items()},
        relevance={h: {e: m[0].cpu() for e, m in r.items()} for h, r in relevance.items()}, targets=chosen,
        grid=model.spatial.grid, heads=cfg.bcast_heads or cfg.spatial.heads, names=names)


def _scores(logits: torch.Tensor) -> torch.Tensor:
    """The one view's logits (C,) of a head (an ensemble's head holds its averaged prediction's log)."""
    return logits.float()[0]
