"""The video dataset: annotations -> frame indices -> decoded, cropped uint8 clips.

Workers do only what must happen per video: decode the needed frames and cut the clip's geometry
(random resized crop in training, short-side resize and crops at test), so that every clip of a
batch has one size. Photometric augmentation, normalisation and mixup run on the whole batch on the
accelerator (`augment.ClipAugment`). An unreadable video is logged and replaced by another one, so
one corrupt file never stops a run; the sample says which files it replaced, so the training loop can
report them however many worker processes decoded them.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import ConfigError
from ..seeds import DEFAULT_SEED
from .annotations import (
    AnnotationError,
    Sample,
    read_cast_epic_list,
    read_epic_classes,
    read_epic_csv,
    read_generic,
    read_kinetics_csv,
    read_path_label_list,
    read_ssv2_json,
    read_ssv2_labels,
    read_unlabeled,
    validate,
)
from .config import DataConfig
from .sampling import dense_indices, official_segment_indices, segment_indices
from .video import FrameFolderBackend, VideoReadError, get_backend, read_frames, resize_clip, video_info

log = logging.getLogger(__name__)


def _read_samples(cfg: DataConfig, file: str) -> tuple[list[Sample], dict[str, list[str]]]:
    """The samples of one annotation file in `cfg.format`, and the class names the file itself gives."""
    task = cfg.tasks[0]
    if cfg.format == "epic_csv":
        return read_epic_csv(file, cfg.root, cfg.layout, cfg.video_template, cfg.frames_template,
                             cfg.use_timestamps), {}
    if cfg.format == "cast_epic":
        return read_cast_epic_list(file, cfg.root, cfg.video_ext or ".mp4"), {}
    if cfg.format == "k400_csv":
        samples, found = read_kinetics_csv(file, cfg.root, task=task)
        return samples, {task: found}
    if cfg.format == "ssv2_json":
        samples, found = read_ssv2_json(file, cfg.labels_json, cfg.root, task=task, ext=cfg.video_ext or ".webm")
        return samples, {task: found}
    if cfg.format == "unlabeled":
        return read_unlabeled(file), {}
    if cfg.format == "generic":
        samples, found = read_generic(file, cfg.root, task=task)
        return samples, {task: found} if found else {}  # a folder per class names them; a CSV may not
    return read_path_label_list(file, cfg.root, task=task), {}


def _read_class_names(files: dict[str, str]) -> dict[str, list[str]]:
    """Class names per task from EPIC's class CSVs, SSV2's labels.json or a text file of one per line."""
    names = {}
    for task, class_file in files.items():
        if class_file.endswith(".csv"):
            names[task] = read_epic_classes(class_file)
        elif class_file.endswith(".json"):
            names[task] = read_ssv2_labels(class_file)
        else:
            names[task] = Path(class_file).read_text().splitlines()
    return names


def load_annotations(cfg: DataConfig, split: str) -> tuple[list[Sample], dict[str, list[str]]]:
    """Samples of a split and the class names per task that the files give, checked (labels in
    range, files present with `check_files`) so that errors surface before training."""
    file = getattr(cfg, split)
    if not file:
        raise ConfigError(f"data.{split}: no annotation file given")
    if not os.path.exists(file):
        raise AnnotationError(f"data.{split}: {file} does not exist")
    samples, names = _read_samples(cfg, file)
    names.update(_read_class_names(cfg.class_names))
    validate(samples, names, cfg.check_files)
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
    """uint8 (T, H, W, 3) -> uint8 (3, T, h, w) with `video.resize_clip` (antialiased bilinear in uint8)."""
    return resize_clip(frames, size).permute(1, 0, 2, 3)  # (3, T, h, w)


def decode_threads(requested: int = 0) -> int:
    """Decoder threads for this process: `requested`, or (0) the cores this process may use divided by
    the loader workers and the processes on this node, at least 1, so that workers x ranks x threads
    never oversubscribes the node (each worker decodes one video at a time)."""
    if requested > 0:
        return requested
    worker = get_worker_info()
    workers = worker.num_workers if worker is not None else 1
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // (workers * ranks))


def test_crops(frames: torch.Tensor, short_side: int, crop: int, num_crops: int) -> list[torch.Tensor]:
    """uint8 (T, H, W, 3) -> `num_crops` uint8 (3, T, crop, crop): resize the short side to
    `short_side`, then 1 centre crop or 3 crops along the long side (start, centre, end)."""
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


def action_span(sample: Sample, total: int | None = None, fps: float | None = None) -> tuple[int, int]:
    """(first frame, number of frames) of the action; the video's `total` frames and `fps` are needed
    unless the sample names its frames (EPIC's start/stop_frame)."""
    if sample.stop_frame is not None:
        return sample.start_frame, sample.stop_frame - sample.start_frame + 1
    if sample.start_sec is None:
        return sample.start_frame, total - sample.start_frame
    start = min(round(sample.start_sec * fps), total - 1)
    stop = min(math.ceil(sample.stop_sec * fps), total)  # exclusive
    return start, max(stop - start, 1)


class VideoDataset(Dataset):
    """Samples are dicts: `video` uint8 (3, 2T, S, S) in training ((num_sample, 3, 2T, S, S) with
    repeated augmentation), (V, 3, 2T, S, S) at test with V = clips x crops (clip-major); `labels`
    {task: class}; `index` (of the sample actually returned); `id`; `skipped`: "path: reason" of the
    unreadable videos it replaced; `short`: whether the action had fewer frames than the clip spans.

    Randomness depends only on (seed, epoch, index), so a resumed run, or any worker count, draws the
    same clips."""

    def __init__(self, cfg: DataConfig, split: str, samples: list[Sample] | None = None, seed: int = DEFAULT_SEED):
        self.cfg, self.split, self.train = cfg, split, split == "train"
        if samples is None:
            samples, self.class_names = load_annotations(cfg, split)
        else:
            self.class_names = {}
        if not samples:
            raise AnnotationError(f"data.{split}: the annotations list no samples")
        self.samples = samples
        self.seed = seed
        self.epoch = 0
        self.stats: Counter = Counter()  # this process's counts; workers report theirs through the samples
        self._info: dict[str, tuple[int, float]] = {}
        on_gpu = {"device": cfg.decode_device} if cfg.decode_device != "cpu" else {}
        self.video_backend = get_backend(cfg.backend, short_side=cfg.decode_short_side, **on_gpu)
        self._threads_pid = -1  # the process whose decoder thread count is set (see `_backend`)
        self.frame_backend = FrameFolderBackend(cfg.frame_file_template if cfg.layout == "frames" else None,
                                                short_side=cfg.decode_short_side)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness depends on (seed, epoch, index), so a resumed run draws the same clips."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        skipped: list[str] = []
        current = index
        while True:
            try:
                item = self._load(current, index)
                item["skipped"] = skipped
                return item
            except VideoReadError as err:
                if self.cfg.on_bad_video == "raise":
                    raise
                skipped.append(str(err))
                self.stats["unreadable"] += 1
                if len(skipped) > self.cfg.max_failures:
                    raise VideoReadError(f"{len(skipped)} unreadable videos in a row; the last: {err}") from err
                rng = np.random.default_rng((self.seed, self.epoch, index, len(skipped)))
                current = (current + 1 + int(rng.integers(len(self) - 1))) % len(self) if len(self) > 1 else current
                log.warning("unreadable video (%s); sample %d is replaced by sample %d", err, index, current)

    def _backend(self, path: str):
        if os.path.isdir(path):
            return self.frame_backend
        if self._threads_pid != os.getpid():  # first read in this (worker) process
            self.video_backend.threads = decode_threads(self.cfg.decode_threads)
            self._threads_pid = os.getpid()
        return self.video_backend

    def _span(self, sample: Sample) -> tuple[int, int]:
        if sample.stop_frame is not None:
            return action_span(sample)
        if sample.path not in self._info:
            info = video_info(sample.path, self._backend(sample.path))
            self._info[sample.path] = (info.num_frames, info.fps)
        return action_span(sample, *self._info[sample.path])

    def _indices(self, length: int, rng, view: int, views: int) -> tuple[list[int], bool]:
        cfg = self.cfg
        if cfg.sampling in ("segment", "official_segment"):
            rule = segment_indices if cfg.sampling == "segment" else official_segment_indices
            idx, _ = rule(length, cfg.num_frames, self.train, rng, view, views)
            return idx, length < cfg.num_frames
        idx, padded = dense_indices(length, cfg.num_frames, cfg.frame_stride, self.train, rng, view, views)
        return idx, padded > 0

    def _load(self, index: int, position: int) -> dict:
        cfg, sample = self.cfg, self.samples[index]
        rng = np.random.default_rng((self.seed, self.epoch, position))
        start, length = self._span(sample)
        if length < 1:
            raise VideoReadError(f"{sample.path}: the action has no frames")
        views = 1 if self.train else cfg.test_clips
        per_view = [self._indices(length, rng, v, views) for v in range(views)]
        short = any(s for _, s in per_view)
        if short:
            self.stats["short_clips"] += 1
        flat = [start + i for idx, _ in per_view for i in idx]
        frames = read_frames(sample.path, flat, self._backend(sample.path))  # (V*2T, H, W, 3)
        frames = frames.view(views, cfg.num_frames, *frames.shape[1:])  # (V, 2T, H, W, 3)
        if self.train:
            clips = []
            for _ in range(cfg.num_sample):
                top, left, h, w = random_resized_crop_box(*frames.shape[2:4], cfg.scale, cfg.ratio, rng)
                crop = frames[0, :, top:top + h, left:left + w]  # (2T, h, w, 3)
                clips.append(_resize(crop, (cfg.input_size, cfg.input_size)))  # (3, 2T, S, S)
            video = clips[0] if cfg.num_sample == 1 else torch.stack(clips)  # (3, 2T, S, S) or (N, 3, 2T, S, S)
        else:
            video = torch.stack([c for v in range(views)
                                 for c in test_crops(frames[v], cfg.short_side, cfg.input_size, cfg.test_crops)])
        return {"video": video, "labels": dict(sample.labels), "index": index, "id": sample.id, "short": short,
                "repeated": self.train and cfg.num_sample > 1}


def collate(batch: list[dict]) -> dict:
    """Stack samples; repeated-augmentation samples (num_sample > 1) become consecutive batch rows.
    Test samples keep their views: (B, V, 3, 2T, S, S). `skipped` lists the unreadable videos met
    while building the batch and `short` counts its short clips, for the epoch's report."""
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
            "id": ids, "index": torch.tensor(index),
            "skipped": [s for item in batch for s in item.get("skipped", [])],
            "short": sum(bool(item.get("short")) for item in batch)}


def build_dataset(cfg: DataConfig, split: str, seed: int = DEFAULT_SEED) -> VideoDataset:
    """The dataset of a split ("train", "val" or "test"); annotation errors are raised here."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    return VideoDataset(cfg, split, seed=seed)
