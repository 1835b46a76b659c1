"""The demo's videos, read back once through the data layer and served from memory.

Every clip is decoded from its mp4 file with `read_frames` and labelled from the EK100-format CSV by
`read_epic_csv`, so the demo goes through the real decoder and annotation reader; the decoded uint8
clips are then kept in memory (a few tens of MB), because decoding thousands of files in every epoch
of three models would cost more than the training on two cores.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import read_frames
from ..data.annotations import read_epic_csv
from ..errors import AnnotationError
from .synth import CLASS_NAMES, annotation_file

VIDEO_TEMPLATE = "videos/{participant_id}/{video_id}.mp4"


def read_split(root: str | Path, split: str, num_frames: int, progress: bool = True) -> dict[str, torch.Tensor]:
    """Decode a split: {"clips": uint8 (M, 3, F, S, S), "verb": (M,), "noun": (M,)}."""
    from tqdm import tqdm

    samples = read_epic_csv(annotation_file(root, split), str(root), video_template=VIDEO_TEMPLATE)
    clips = []
    for s in tqdm(samples, desc=f"decode {split}", disable=not progress, unit="clip"):
        if s.stop_frame - s.start_frame + 1 != num_frames:
            raise AnnotationError(f"{s.path}: the annotation gives {s.stop_frame - s.start_frame + 1} frames, "
                                  f"expected {num_frames}")
        frames = read_frames(s.path, range(s.start_frame, s.stop_frame + 1))  # (F, S, S, 3)
        clips.append(frames.permute(3, 0, 1, 2))  # (3, F, S, S)
    return {"clips": torch.stack(clips), "verb": torch.tensor([s.labels["verb"] for s in samples]),
            "noun": torch.tensor([s.labels["noun"] for s in samples])}


class ClipDataset(torch.utils.data.Dataset):
    """Decoded clips as the data layer's sample dicts; `views=True` adds the view axis of test samples."""

    def __init__(self, split: dict[str, torch.Tensor], views: bool = False, class_names=None):
        self.clips, self.verb, self.noun = split["clips"], split["verb"], split["noun"]
        self.views = views
        self.class_names = class_names or CLASS_NAMES

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        """The clips are fixed; augmentation happens on the batch."""

    def __getitem__(self, i: int) -> dict:
        video = self.clips[i][None] if self.views else self.clips[i]  # (1, 3, F, S, S) or (3, F, S, S)
        return {"video": video, "labels": {"verb": int(self.verb[i]), "noun": int(self.noun[i])}, "index": i,
                "id": str(i)}
