"""What CAST looked at in one video: cross-attention maps of every B-CAST layer, Grad-CAM per head, top-k.

`explain_clip` takes the views `cast-video predict` takes (clips x crops of the whole video, through
`Predictor`), or the crops of one clip around `clip_at` seconds, runs the model once on all of them with
capture on (`predict_views`: the prediction is predict's, probabilities averaged over the views), then
Grad-CAM for the predicted class of that average (or the target), and returns everything the report
(`engine/explain_page.py`) draws, for every view, with the mapping from each token back to the original
video's frame numbers and pixels. The pictures draw one view (`Explanation.one_view`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import video_info
from ..data.sampling import segment_indices
from ..errors import ConfigError
from ..models import CAST
from ..models.capture import capture_cross_attention
from .loop import predict_views
from .predict import Predictor, top_classes


@dataclass
class Explanation:
    """One video seen by one model through V views (clip-major: view = clip * crops + crop).

    `frames` (V, T, S, S, 3) uint8 are the spatial expert's frames (clip frame 2t+1) after each view's crop;
    `maps` {layer: {direction: (V, H, ...)}} in capture's layouts and `relevance` {head: {expert: (V, T, N)}}
    keep every view, on the CPU. `one_view(k)` is the same with the view axis removed (frames (T, S, S, 3),
    maps (H, ...), relevance (T, N), `mapping` of that view): what the pictures and the page draw."""

    video: str
    frames: torch.Tensor
    mapping: dict
    top: dict[str, list[dict]]  # averaged over all views, as predict's
    windows: dict[str, str]  # direction -> window shape
    maps: dict[int, dict[str, torch.Tensor]]
    relevance: dict[str, dict[str, torch.Tensor]]
    targets: dict[str, int]
    grid: int
    heads: int = 0
    names: dict[str, list[str]] = field(default_factory=dict)
    view: int | None = None  # the view drawn by default; in a `one_view` result, the view it is

    def one_view(self, k: int | None = None) -> Explanation:
        k = self.view if k is None else k
        check_view(k, self.frames.shape[0])
        common = {key: v for key, v in self.mapping.items() if key != "views"}
        return dataclasses.replace(
            self, frames=self.frames[k], mapping={**common, **self.mapping["views"][k]},
            maps={layer: {d: m[k] for d, m in dirs.items()} for layer, dirs in self.maps.items()},
            relevance={h: {e: m[k] for e, m in r.items()} for h, r in self.relevance.items()}, view=k)


def check_view(k: int, views: int) -> None:
    if not 0 <= k < views:
        raise ConfigError(f"--view {k}: there are {views} views (0 to {views - 1})")


def default_view(clips: int, crops: int) -> int:
    """The middle clip's centre crop (for predict's 2 clips: the segment centres, the old single view)."""
    return (clips // 2) * crops + crops // 2


def clip_indices(num_frames: int, fps: float, clip_frames: int, clip_at: float, clip_len: float) -> list[int]:
    """The 2T frame numbers of the clip over `clip_len` seconds centred on `clip_at`, moved inside the video,
    sampled as predict's centre segment view."""
    if clip_at < 0 or clip_at * fps >= num_frames:
        raise ConfigError(f"--clip-at {clip_at}s is outside the video (0 to {num_frames / fps:.2f}s)")
    span = max(1, min(num_frames, round(clip_len * fps)))
    start = min(max(0, round(clip_at * fps) - span // 2), num_frames - span)
    return [start + i for i in segment_indices(span, clip_frames, False, view=1, num_views=2)[0]]


def crop_mapping(height: int, width: int, size: int, num_crops: int = 1, index: int = 0) -> dict:
    """Where crop `index` of `test_crops(frames, size, size, num_crops)` lies in the original frame (3 crops:
    start, centre and end of the long side)."""
    scale = size / min(height, width)
    nh, nw = max(size, round(height * scale)), max(size, round(width * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    if num_crops == 3 and nw >= nh:
        left = (0, (nw - size) // 2, nw - size)[index]
    elif num_crops == 3:
        top = (0, (nh - size) // 2, nh - size)[index]
    sy, sx = height / nh, width / nw
    return {"crop": index, "resized_to": [nh, nw], "crop_top_left": [top, left], "crop_size": size,
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


def _chosen(keys, probs: dict[str, torch.Tensor], targets: dict[str, int]) -> dict[str, int]:
    """The class each output explains: the target, else the head's prediction averaged over the views; an
    ensemble member (`verb/spatial`) explains its head's class."""
    chosen = {h: targets.get(h, int(p.argmax())) for h, p in probs.items()}
    return {k: chosen.get(k, chosen.get(k.split("/")[0], 0)) for k in keys}


def explain_clip(model: CAST, path: str | Path, names: dict[str, list[str]] | None = None,
                 clip_at: float | None = None, clip_len: float = 2.0, target: str | None = None, topk: int = 5,
                 device: str = "cpu", clips: int = 2, crops: int = 3, view: int | None = None) -> Explanation:
    """Explain `path` through predict's `clips` x `crops` views (or the `crops` crops of the clip at `clip_at`
    seconds); `view` is the one drawn (default: `default_view`)."""
    cfg = model.config
    names = names or {}
    predictor = Predictor(model, names, clips, crops, device, precision="fp32")  # capture recomputes in fp32
    model, info = predictor.model, video_info(path)
    per_clip = predictor.clip_indices(info.num_frames) if clip_at is None else \
        [clip_indices(info.num_frames, info.fps, cfg.num_frames, clip_at, clip_len)]
    views = predictor.views(path, per_clip)  # (V, 3, 2T, S, S) uint8, V = clips x crops
    view = default_view(len(per_clip), crops) if view is None else view
    check_view(view, len(views))  # before the forward pass
    targets = resolve_targets(model, names, target)
    with torch.no_grad(), capture_cross_attention(model) as maps:  # predict's own forward pass, captured
        probs = predict_views(model, views[None], predictor.augment, predictor.precision, predictor.device,
                              predictor.heads)  # {head: (1, C)} averaged over the views
    x = predictor.augment(views.to(predictor.device))[0]  # (V, 3, 2T, S, S) normalised
    logits, relevance = model.relevance_maps(x, _chosen(predictor.heads, {h: p[0] for h, p in probs.items()},
                                                        targets))
    chosen = _chosen(logits, {h: p[0] for h, p in probs.items()}, targets)
    size = cfg.img_size
    mapping = {"video": str(path), "fps": info.fps, "num_frames": info.num_frames, "original_size":
               [info.height, info.width], "clips": len(per_clip), "crops": crops, "shown_view": view,
               "patch_size": size // model.spatial.grid, "grid": model.spatial.grid,  # crop pixels per patch
               "views": [{"view": c * crops + j, "clip": c, "clip_frames": idx, "spatial_frames": idx[1::2],
                          "temporal_tubes": [idx[i:i + 2] for i in range(0, len(idx), 2)],
                          **crop_mapping(info.height, info.width, size, crops, j)}
                         for c, idx in enumerate(per_clip) for j in range(crops)]}
    return Explanation(
        video=str(path), frames=views[:, :, 1::2].permute(0, 2, 3, 4, 1).contiguous(),  # (V, T, S, S, 3)
        mapping=mapping,
        top={h: top_classes(p[0], names.get(h), topk) for h, p in probs.items()},
        windows={"t2s": cfg.t2s_window, "s2t": cfg.s2t_window},
        maps={layer: {d: m.cpu() for d, m in dirs.items()} for layer, dirs in maps.items()},
        relevance={h: {e: m.cpu() for e, m in r.items()} for h, r in relevance.items()}, targets=chosen,
        grid=model.spatial.grid, heads=cfg.bcast_heads or cfg.spatial.heads, names=names, view=view)
