"""`DataConfig`: one dataclass for every dataset format, sampling and augmentation option.

Plain fields only, so a YAML `data:` section maps onto it one to one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..normalization import PIXEL_STATS

log = logging.getLogger(__name__)

FORMATS = ("epic_csv", "cast_epic", "k400_csv", "ssv2_json", "list", "generic", "unlabeled")


@dataclass
class DataConfig:
    """Defaults follow the paper (section 4.2, appendix B, Table 4) and the official scripts."""

    format: str = "list"  # one of FORMATS; "unlabeled": every video under a folder (pre-training)
    root: str = ""  # videos (or frame folders) are found relative to this
    train: str = ""  # annotation file (or folder, for `generic`) of each split
    val: str = ""
    test: str = ""
    val_fraction: float = 0.1  # `train --data` without a val/ folder: the share of each class held out
    labels_json: str = ""  # SSV2's labels.json
    class_names: dict[str, str] = field(default_factory=dict)  # task -> EPIC class CSV / name list file
    tasks: list[str] = field(default_factory=lambda: ["action"])  # label names for single-label formats
    video_ext: str = ""  # file suffix of cast_epic (".mp4") and ssv2_json (".webm") videos; "" = that default
    layout: str = "video"  # EPIC: "video" files or extracted "frames" folders
    video_template: str = "{participant_id}/videos/{video_id}.MP4"  # EPIC, relative to root; CSV columns
    frames_template: str = "{participant_id}/rgb_frames/{video_id}"
    frame_file_template: str = "frame_{:010d}.jpg"  # EPIC frame files, numbered from 1
    use_timestamps: bool = False  # EPIC: segments from start/stop_timestamp instead of start/stop_frame
    check_files: bool = False  # every annotated file must exist (checked once, before training)
    backend: str | None = None  # video decoder: pyav (default), decord, torchcodec
    decode_threads: int = 0  # per loader worker; 0: the node's cores / (workers x processes on the node)
    decode_short_side: int = 0  # scale frames on decode to this short side (never up); 0: decoded size
    decode_device: str = "cpu"  # "cuda": decode on the GPU (backend torchcodec, num_workers 0; unmeasured)
    # temporal sampling
    num_frames: int = 16  # frames per clip (2T: the temporal expert's tubelets are 2 frames)
    sampling: str = "segment"  # "segment" (SSV2, EK100), "official_segment" (the official code's) or "dense" (K400)
    frame_stride: int = 4  # dense sampling stride
    test_clips: int = 2  # temporal views at test
    test_crops: int = 3  # spatial views at test (1 = centre crop)
    # spatial
    input_size: int = 224
    short_side: int = 224  # test-time resize of the short side
    scale: tuple[float, float] = (0.08, 1.0)  # random resized crop
    ratio: tuple[float, float] = (0.75, 1.3333333)
    # augmentation (on the batch, on the accelerator)
    flip: bool = True  # off for SSV2, where left and right are labels
    color_jitter: float = 0.4
    color_jitter_with_rand_augment: bool = False  # timm and the official code skip jitter under RandAugment
    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"  # the official CAST default; "" turns it off
    random_erasing: float = 0.0  # the official scripts pass --reprob 0
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 0.9  # the official scripts' --mixup_prob
    switch_prob: float = 0.0  # the official scripts' --mixup_switch_prob: mixup only, never cutmix
    label_smoothing: float = 0.1
    norm: str = "imagenet"  # "imagenet" (what the official weights expect) or "clip"; mean/std override it
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    num_sample: int = 1  # repeated augmentation: clips drawn from one decoded video per step
    on_bad_video: str = "skip"  # "skip": log, count and replace an unreadable video; "raise": stop
    max_failures: int = 20  # consecutive unreadable videos before even a "skip" run stops

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data format must be one of {FORMATS}, got {self.format!r}")
        if self.sampling not in ("segment", "official_segment", "dense"):
            raise ValueError(f"sampling must be 'segment', 'official_segment' or 'dense', got {self.sampling!r}")
        if self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 or 3, got {self.test_crops}")
        if self.norm not in PIXEL_STATS:
            raise ValueError(f"norm must be one of {tuple(PIXEL_STATS)}, got {self.norm!r}")
        if self.on_bad_video not in ("skip", "raise"):
            raise ValueError(f"on_bad_video must be 'skip' or 'raise', got {self.on_bad_video!r}")
        if self.decode_device != "cpu" and self.backend != "torchcodec":
            raise ValueError(f"decode_device {self.decode_device!r} needs backend: torchcodec, got {self.backend!r}")
        if self.layout not in ("video", "frames"):
            raise ValueError(f"layout must be 'video' or 'frames', got {self.layout!r}")
        if min(self.num_frames, self.frame_stride, self.test_clips, self.input_size, self.num_sample) < 1:
            raise ValueError("num_frames, frame_stride, test_clips, input_size and num_sample must be >= 1")
        if self.format == "ssv2_json" and self.flip:
            log.warning("data.flip is on for SSV2, whose labels name left and right; the paper turns it off")

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std): `mean` / `std` when given, else those of the `norm` preset. Resolved on use, not
        stored, so that overriding `norm` on a loaded config still takes effect."""
        mean, std = PIXEL_STATS[self.norm]
        return tuple(self.mean or mean), tuple(self.std or std)
