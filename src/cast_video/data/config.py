"""`DataConfig`: one dataclass for every dataset format, sampling and augmentation option."""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMATS = ("epic_csv", "cast_epic", "k400_csv", "ssv2_json", "list", "generic", "unlabeled")


@dataclass
class DataConfig:
    """Defaults follow the paper (section 4.2, appendix B, Table 4) and the official scripts."""

    format: str = "list"  # one of FORMATS; "unlabeled": every video under a folder (pre-training)
    root: str = ""  # videos (or frame folders) are found relative to this
    train: str = ""  # annotation file (or folder, for `generic`) of each split
    val: str = ""
    test: str = ""
    labels_json: str = ""  # SSV2's labels.json
    class_names: dict[str, str] = field(default_factory=dict)  # task -> EPIC class CSV / name list file
    tasks: list[str] = field(default_factory=lambda: ["action"])  # label names for single-label formats
    layout: str = "video"  # EPIC: "video" files or extracted "frames" folders
    video_template: str = "{participant_id}/videos/{video_id}.MP4"
    frames_template: str = "{participant_id}/rgb_frames/{video_id}"
    frame_file_template: str = "frame_{:010d}.jpg"
    backend: str | None = None  # video decoder: pyav (default), torchcodec
    # temporal sampling
    num_frames: int = 16
    sampling: str = "segment"  # "segment" (SSV2, EK100) or "dense" (K400)
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
    rand_augment: str = "rand-m7-n4-mstd0.5"
    random_erasing: float = 0.0
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_sample: int = 1  # repeated augmentation: clips drawn from one decoded video per step
    max_failures: int = 20  # consecutive unreadable videos before the run stops

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data format must be one of {FORMATS}, got {self.format!r}")
        if self.sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {self.sampling!r}")
        if self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 or 3, got {self.test_crops}")
