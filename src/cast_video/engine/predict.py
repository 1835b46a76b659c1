"""Predictions for videos outside any dataset: multi-view scores, or a timeline over a long video.

A long video is decoded once: the frames of every window are gathered into one `read_frames` call,
which seeks across the gaps, and the windows then go through the model in batches.

The model is anything that maps a normalised clip batch to logits per head: a CAST, or an exported
ONNX / pt2 model (`cast_video.deploy.runtime`). What the input must look like comes from a
`Contract`, so every runtime goes through this one preprocessing and postprocessing.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import DataConfig, build_gpu_augment, read_frames, video_info
from ..data.annotations import VIDEO_SUFFIXES, clips_under
from ..data.dataset import test_crops
from ..data.sampling import segment_indices
from ..deploy.contract import Contract
from ..errors import ConfigError, DataError
from ..models import CAST
from ..precision import prepare
from .loop import predict_views


def top_classes(probs: torch.Tensor, names: list[str] | None, k: int) -> list[dict]:
    values, ids = probs.topk(min(k, probs.numel()))
    return [{"class": int(i), "name": names[i] if names and i < len(names) else str(int(i)), "score": float(v)}
            for v, i in zip(values, ids, strict=True)]


class Predictor:
    """Multi-view predictions of a CAST, or of an exported model with its `contract` (then the contract,
    not a config, says what the input must be). `precision="auto"` picks bf16 where it is faster (see
    `cast_video.precision`); in bf16 the model's frozen weights are stored in bf16 (`CAST.cast_frozen_`).
    An exported model runs its fp32 graph."""

    def __init__(self, model: torch.nn.Module, class_names: dict[str, list[str]] | None = None, clips: int = 2,
                 crops: int = 3, device: str = "cpu", precision: str = "auto", batch_size: int = 4,
                 contract: Contract | None = None):
        c = contract or Contract.of_model(model, class_names)
        self.contract = c
        self.model = model.to(device).eval()
        if isinstance(model, CAST):
            precision, self.precision_reason = prepare(self.model, precision, device)
        elif precision in ("auto", "fp32"):
            precision, self.precision_reason = "fp32", "an exported model runs its fp32 graph"
        else:
            raise ConfigError(f"precision {precision}: an exported model runs its fp32 graph (use auto or fp32)")
        self.names = class_names or c.class_names
        self.data = DataConfig(num_frames=c.num_frames, input_size=c.img_size, short_side=c.img_size,
                               test_clips=clips, test_crops=crops, norm=c.input_norm, mean=tuple(c.mean),
                               std=tuple(c.std))
        self.heads = list(c.heads)
        self.augment = build_gpu_augment(self.data, c.heads).to(device).eval()
        self.device, self.precision, self.batch_size = torch.device(device), precision, batch_size
        if self.device.type == "cuda":  # TF32 matmuls, as in training and evaluation
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def _scores(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, V, 3, 2T, S, S) uint8 -> {task: (N, C)} probabilities averaged over the V views."""
        parts = [predict_views(self.model, views[i:i + self.batch_size], self.augment, self.precision, self.device,
                               self.heads) for i in range(0, len(views), self.batch_size)]
        return {t: torch.cat([p[t] for p in parts]) for t in self.heads}

    def clip_indices(self, length: int) -> list[list[int]]:
        """The 2T frame numbers of each of the `clips` temporal views of a video of `length` frames."""
        cfg = self.data
        return [segment_indices(length, cfg.num_frames, False, view=v, num_views=cfg.test_clips)[0]
                for v in range(cfg.test_clips)]

    def views(self, path: str | Path, clips: list[list[int]] | None = None) -> torch.Tensor:
        """The clips x crops uint8 views (V, 3, 2T, S, S) of one whole video (clip-major: view = clip * crops
        + crop), or of the given `clips` (each 2T frame numbers) instead of `clip_indices`'."""
        cfg = self.data
        per_view = clips or self.clip_indices(video_info(path).num_frames)
        frames = read_frames(path, [i for idx in per_view for i in idx])  # (clips*2T, H, W, 3)
        frames = frames.view(len(per_view), cfg.num_frames, *frames.shape[1:])  # (clips, 2T, H, W, 3)
        return torch.stack([c for clip in frames for c in test_crops(clip, cfg.short_side, cfg.input_size,
                                                                     cfg.test_crops)])

    def inputs(self, path: str | Path) -> torch.Tensor:
        """The normalised model inputs (V, 3, 2T, S, S) float32 of one whole video, as the model sees them."""
        return self.augment(self.views(path).to(self.device))[0]

    def video(self, path: str | Path, topk: int = 5) -> dict:
        """Multi-view prediction of one whole video: clips x crops views, probabilities averaged."""
        scores = self._scores(self.views(path)[None])
        return {"video": str(path), **{t: top_classes(scores[t][0], self.names.get(t), topk) for t in self.heads}}

    def timeline(self, path: str | Path, window: float, stride: float, topk: int = 5) -> dict:
        """Sliding windows of `window` seconds every `stride` seconds, one centre view each."""
        info = video_info(path)
        win, step = max(1, round(window * info.fps)), max(1, round(stride * info.fps))
        starts = list(range(0, max(info.num_frames - win, 0) + 1, step))
        cfg = self.data
        indices = [s + i for s in starts for i in segment_indices(min(win, info.num_frames), cfg.num_frames, False,
                                                                    view=1, num_views=2)[0]]
        frames = read_frames(path, indices)  # one decode for all windows
        frames = frames.view(len(starts), cfg.num_frames, *frames.shape[1:])
        views = torch.stack([test_crops(f, cfg.short_side, cfg.input_size, 1)[0] for f in frames])[:, None]
        scores = self._scores(views)
        rows = [{"start_s": round(s / info.fps, 3), "end_s": round(min(s + win, info.num_frames) / info.fps, 3),
                 **{t: top_classes(scores[t][i], self.names.get(t), topk) for t in self.heads}}
                for i, s in enumerate(starts)]
        return {"video": str(path), "fps": info.fps, "window_s": window, "stride_s": stride, "timeline": rows}


def find_videos(path: str | Path) -> list[Path]:
    """A video file or frame folder; or every video and frame folder under a folder (one that holds
    neither is an error, not an empty result)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        return [path]
    found = clips_under(path)
    if not found:
        raise DataError(f"{path}: no video files ({', '.join(VIDEO_SUFFIXES)}) or frame folders under this folder")
    return found


def summarize(result: dict) -> str:
    lines = [result["video"]]
    if "timeline" in result:
        for row in result["timeline"]:
            best = ", ".join(f"{t}={row[t][0]['name']} ({row[t][0]['score']:.2f})" for t in row
                             if isinstance(row[t], list))
            lines.append(f"  {row['start_s']:8.2f}-{row['end_s']:8.2f}s  {best}")
        return "\n".join(lines)
    for task, top in result.items():
        if isinstance(top, list):
            lines.append(f"  {task}: " + ", ".join(f"{r['name']} {r['score']:.3f}" for r in top))
    return "\n".join(lines)
