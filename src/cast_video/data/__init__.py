"""Video data: decoding, the datasets' annotation formats, sampling and augmentation."""

from .annotations import AnnotationError, Sample
from .augment import ClipAugment, build_gpu_augment
from .config import DataConfig
from .dataset import VideoDataset, build_dataset, collate, load_annotations
from .video import VideoInfo, VideoReadError, available_backends, num_frames, read_frames, video_info

__all__ = ["AnnotationError", "ClipAugment", "DataConfig", "Sample", "VideoDataset", "VideoInfo", "VideoReadError",
           "available_backends", "build_dataset", "build_gpu_augment", "collate", "load_annotations", "num_frames",
           "read_frames", "video_info"]
