"""Which frames make a clip: segment sampling (TSN; SSV2 and EK100), the official CAST code's variant of
it (`official_segment`), and dense sampling (K400).

Indices are relative to the action's first frame. Both return `(indices, padded)`, where `padded`
counts positions that repeat the last frame because the action is shorter than the dense window.
Segment sampling of an action shorter than the clip repeats frames evenly instead (its segments are
shorter than a frame), as the official code does; the dataset counts such clips as short.
"""

from __future__ import annotations

import numpy as np


def segment_indices(length: int, num_frames: int, train: bool, rng: np.random.Generator | None = None,
                    view: int = 0, num_views: int = 1) -> tuple[list[int], int]:
    """Split the action into `num_frames` equal segments and take one frame from each: a random one
    in training; at test, view v of N takes the frame at fraction v/N of every segment (N=2: the
    segment starts, then the centres)."""
    seg = length / num_frames
    if train:
        offsets = rng.random(num_frames)
    else:
        offsets = np.full(num_frames, view / num_views)
    idx = np.floor(seg * (np.arange(num_frames) + offsets)).astype(int)
    clipped = np.minimum(idx, length - 1)
    return clipped.tolist(), int((idx > length - 1).sum())


def official_segment_indices(length: int, num_frames: int, train: bool, rng: np.random.Generator | None = None,
                             view: int = 0, num_views: int = 1) -> tuple[list[int], int]:
    """The official code's training rule: segments of floor(length / num_frames) whole frames, so only
    the first num_frames * floor(length / num_frames) frames are ever drawn, and frame 0 for every
    position when the action is shorter than the clip. At test it is `segment_indices` (the official
    test views are the segment starts and centres of float segments, as ours)."""
    if not train:
        return segment_indices(length, num_frames, False, view=view, num_views=num_views)
    seg = length // num_frames
    if seg == 0:
        return [0] * num_frames, 0
    return (seg * np.arange(num_frames) + rng.integers(0, seg, num_frames)).tolist(), 0


def dense_indices(length: int, num_frames: int, stride: int, train: bool, rng: np.random.Generator | None = None,
                  view: int = 0, num_views: int = 1) -> tuple[list[int], int]:
    """`num_frames` frames `stride` apart: a random window in training, N windows evenly spaced over
    the video at test. A video shorter than the window repeats its last frame."""
    span = (num_frames - 1) * stride + 1
    room = max(length - span, 0)
    if train:
        start = int(rng.integers(0, room + 1))
    else:
        start = view * room // (num_views - 1) if num_views > 1 else room // 2  # floored, as the official code
    idx = start + stride * np.arange(num_frames)
    return np.minimum(idx, length - 1).tolist(), int((idx > length - 1).sum())
