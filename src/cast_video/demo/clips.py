"""Reading the demo's videos back, once, and serving them from memory.

Every clip is decoded from its mp4 file and its labels come from the EK100-format CSV, so the demo goes
through a real decoder; the decoded uint8 clips are then kept in memory (a few tens of MB), because
decoding thousands of files in every epoch of three models would cost more than the training on two
cores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import torch

from ..config_utils import ConfigError
from .synth import annotation_file

# The normalisation of every clip the demo models see (ImageNet statistics, as VideoMAE uses).
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video: uint8 (F, H, W, 3)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def read_split(root: str | Path, split: str, num_frames: int, progress: bool = True) -> dict[str, torch.Tensor]:
    """Decode a split: {"clips": uint8 (M, F, S, S, 3), "verb": (M,), "noun": (M,)}."""
    from tqdm import tqdm

    path = annotation_file(root, split)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    clips, verbs, nouns = [], [], []
    for line, row in enumerate(tqdm(rows, desc=f"decode {split}", disable=not progress, unit="clip"), start=2):
        try:
            video = Path(root) / "videos" / row["participant_id"] / f"{row['video_id']}.mp4"
            start, stop = int(row["start_frame"]), int(row["stop_frame"])
            verbs.append(int(row["verb_class"]))
            nouns.append(int(row["noun_class"]))
        except (KeyError, ValueError) as err:
            raise ConfigError(f"{path}:{line}: bad annotation row ({err})") from err
        frames = read_video(video)[start - 1:stop]  # EK100 frame numbers are 1-based and inclusive
        if len(frames) != num_frames:
            raise ValueError(f"{video}: frames {start}..{stop} give {len(frames)} frames, expected {num_frames}")
        clips.append(frames)
    return {"clips": torch.from_numpy(np.stack(clips)), "verb": torch.tensor(verbs), "noun": torch.tensor(nouns)}


def normalise(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> normalised float (B, 3, F, H, W), the models' input."""
    x = clips.permute(0, 4, 1, 2, 3).float() / 255.0  # (B, 3, F, H, W)
    return (x - MEAN[:, None, None, None]) / STD[:, None, None, None]


class ClipDataset(torch.utils.data.Dataset):
    """Decoded clips as (normalised clip (3, F, S, S), verb, noun)."""

    def __init__(self, split: dict[str, torch.Tensor]):
        self.clips, self.verb, self.noun = split["clips"], split["verb"], split["noun"]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        return normalise(self.clips[i:i + 1])[0], self.verb[i], self.noun[i]
