"""The video dataset: annotations -> frame indices -> decoded, cropped uint8 clips.

Workers do only what must happen per video: decode the needed frames and cut the clip's geometry
(random resized crop in training, short-side resize and crops at test), so that every clip of a
batch has one size. Photometric augmentation, normalisation and mixup run on the whole batch on the
accelerator (`augment.ClipAugment`). An unreadable video is logged and replaced by another one, so
one corrupt file never stops a run.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .annotations import (
    Sample,
    read_cast_epic_list,
    read_epic_classes,
    read_epic_csv,
    read_generic,
    read_kinetics_csv,
    read_path_label_list,
    read_ssv2_json,
    read_unlabeled,
)
from .config import DataConfig
from .sampling import dense_indices, segment_indices
from .video import FrameFolderBackend, VideoReadError, get_backend, video_info

log = logging.getLogger(__name__)


def load_annotations(cfg: DataConfig, split: str) -> tuple[list[Sample], dict[str, list[str]]]:
    """Samples of a split and the class names per task that the files give."""
    file = getattr(cfg, split)
    if not file:
        raise ValueError(f"data.{split}: no annotation file given")
    names: dict[str, list[str]] = {}
    task = cfg.tasks[0]
    if cfg.format == "epic_csv":
        samples = read_epic_csv(file, cfg.root, cfg.layout, cfg.video_template, cfg.frames_template)
    elif cfg.format == "cast_epic":
        samples = read_cast_epic_list(file, cfg.root)
    elif cfg.format == "k400_csv":
        samples, names[task] = read_kinetics_csv(file, cfg.root, task=task)
    elif cfg.format == "ssv2_json":
        samples, names[task] = read_ssv2_json(file, cfg.labels_json, cfg.root, task=task)
    elif cfg.format == "unlabeled":
        samples = read_unlabeled(file)
    elif cfg.format == "generic":
        samples, found = read_generic(file, cfg.root, task=task)
        if found:
            names[task] = found
    else:
        samples = read_path_label_list(file, cfg.root, task=task)
    for t, class_file in cfg.class_names.items():
        if class_file.endswith(".csv"):
            names[t] = read_epic_classes(class_file)
        else:
            names[t] = Path(class_file).read_text().splitlines()
    return samples, names


def random_resized_crop_box(h: int, w: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop with area fraction in `scale` and aspect in
    `ratio`, as torchvision draws it (10 tries, then a centre crop of the clamped ratio)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif in_ratio > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (3, T, h, w), bilinear with antialiasing."""
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3)  # (3, T, h, w)


def test_crops(frames: torch.Tensor, short_side: int, crop: int, num_crops: int) -> list[torch.Tensor]:
    """Resize the short side to `short_side`, then 1 centre crop or 3 crops along the long side."""
    h, w = frames.shape[1:3]
    scale = short_side / min(h, w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
    clip = _resize(frames, (nh, nw))  # (3, T, nh, nw)
    if num_crops == 1:
        starts = [((nh - crop) // 2, (nw - crop) // 2)]
    elif nw >= nh:
        starts = [((nh - crop) // 2, x) for x in (0, (nw - crop) // 2, nw - crop)]
    else:
        starts = [(y, (nw - crop) // 2) for y in (0, (nh - crop) // 2, nh - crop)]
    return [clip[:, :, y:y + crop, x:x + crop] for y, x in starts]


class VideoDataset(Dataset):
    """Samples are dicts: `video` uint8 (3, 2T, S, S) in training, (V, 3, 2T, S, S) at test with V =
    clips x crops; `labels` {task: class}; `index`; `id`."""

    def __init__(self, cfg: DataConfig, split: str, samples: list[Sample] | None = None, seed: int = 0):
        self.cfg, self.split, self.train = cfg, split, split == "train"
        if samples is None:
            samples, self.class_names = load_annotations(cfg, split)
        else:
            self.class_names = {}
        if not samples:
            raise ValueError(f"data.{split}: the annotations list no samples")
        self.samples = samples
        self.seed = seed
        self.epoch = 0
        self.stats: Counter = Counter()
        self._lengths: dict[str, int] = {}
        self.backend = FrameFolderBackend(cfg.frame_file_template) if cfg.layout == "frames" else \
            get_backend(cfg.backend)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness depends on (seed, epoch, index), so a resumed run draws the same clips."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        failures = 0
        current = index
        while True:
            try:
                return self._load(current, index)
            except VideoReadError as err:
                failures += 1
                self.stats["unreadable"] += 1
                if failures > self.cfg.max_failures:
                    raise VideoReadError(f"{failures} unreadable videos in a row, the last: {err}") from err
                current = (index + failures) % len(self.samples)  # deterministic replacement: the next ones
                log.warning("skipping unreadable video (%s); using sample %d instead", err, current)

    def _length(self, sample: Sample) -> int:
        if sample.stop_frame is not None:
            return sample.stop_frame - sample.start_frame + 1
        if sample.path not in self._lengths:
            self._lengths[sample.path] = video_info(sample.path, self.backend).num_frames - sample.start_frame
        return self._lengths[sample.path]

    def _indices(self, length: int, rng, view: int, views: int) -> list[int]:
        cfg = self.cfg
        if cfg.sampling == "segment":
            idx, padded = segment_indices(length, cfg.num_frames, self.train, rng, view, views)
        else:
            idx, padded = dense_indices(length, cfg.num_frames, cfg.frame_stride, self.train, rng, view, views)
        if padded:
            self.stats["padded_clips"] += 1
        return idx

    def _load(self, index: int, position: int) -> dict:
        cfg, sample = self.cfg, self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, position))
        length = self._length(sample)
        if length < 1:
            raise VideoReadError(f"{sample.path}: the action has no frames")
        views = 1 if self.train else cfg.test_clips
        per_view = [self._indices(length, rng, v, views) for v in range(views)]
        flat = [sample.start_frame + i for idx in per_view for i in idx]
        frames = torch.from_numpy(self.backend.read(sample.path, flat))  # (views*2T, H, W, 3)
        frames = frames.view(views, cfg.num_frames, *frames.shape[1:])
        if self.train:
            clips = []
            for _ in range(cfg.num_sample):
                top, left, h, w = random_resized_crop_box(*frames.shape[2:4], cfg.scale, cfg.ratio, rng)
                crop = frames[0, :, top:top + h, left:left + w]
                clips.append(_resize(crop, (cfg.input_size, cfg.input_size)))
            video = clips[0] if cfg.num_sample == 1 else torch.stack(clips)
        else:
            video = torch.stack([c for v in range(views)
                                 for c in test_crops(frames[v], cfg.short_side, cfg.input_size, cfg.test_crops)])
        return {"video": video, "labels": dict(sample.labels), "index": index, "id": sample.id,
                "repeated": self.train and cfg.num_sample > 1}


def collate(batch: list[dict]) -> dict:
    """Stack samples; repeated-augmentation samples (num_sample > 1) become consecutive batch rows.
    Test samples keep their views: (B, V, 3, 2T, S, S)."""
    videos, labels, ids, index = [], {}, [], []
    for item in batch:
        v = item["video"]
        repeats = v.shape[0] if item.get("repeated") else 1
        videos.append(v if item.get("repeated") else v[None])
        for task, y in item["labels"].items():
            labels.setdefault(task, []).extend([y] * repeats)
        ids.extend([item["id"]] * repeats)
        index.extend([item["index"]] * repeats)
    return {"video": torch.cat(videos), "labels": {t: torch.tensor(y) for t, y in labels.items()},
            "id": ids, "index": torch.tensor(index)}


def build_dataset(cfg: DataConfig, split: str, seed: int = 0) -> VideoDataset:
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    return VideoDataset(cfg, split, seed=seed)
