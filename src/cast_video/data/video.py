"""Decoding exactly the frames a clip needs, from video files or folders of extracted frames.

A backend reads frames by index. PyAV (bundled FFmpeg) is the default: it seeks to the keyframe
before the first wanted frame and decodes forward, seeking again across long gaps, so 16 frames of a
one-hour EPIC video never cost a full decode. A backend returns exactly the frames asked for or
raises `VideoReadError`: a truncated file can open fine and then end early.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch


class VideoReadError(RuntimeError):
    """A video (or frame folder) that cannot give the requested frames; the message names the file."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _frame_index(frame: av.VideoFrame, stream, fps: float) -> int:
    start = stream.start_time or 0
    return round(float((frame.pts - start) * stream.time_base) * fps)


class PyAVBackend:
    """Seek-and-decode with PyAV. `seek_gap`: a gap of more frames than this between two wanted
    frames is crossed by seeking instead of decoding through it."""

    name = "pyav"

    def __init__(self, seek_gap: int = 96):
        self.seek_gap = seek_gap
        self.frames_decoded = 0  # a running count, for benchmarks and tests of the seeking

    def info(self, path: str) -> VideoInfo:
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                fps = float(stream.average_rate or stream.guessed_rate or 30)
                count = stream.frames
                if count <= 0:  # the container does not say: count packets, no decoding needed
                    count = sum(1 for p in container.demux(stream) if p.size > 0)
                return VideoInfo(count, fps, stream.codec_context.height, stream.codec_context.width)
        except (av.FFmpegError, IndexError, OSError) as err:
            raise VideoReadError(f"{path}: cannot open video: {err}") from err

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        wanted = sorted(set(indices))
        if wanted and wanted[0] < 0:
            raise VideoReadError(f"{path}: negative frame index {wanted[0]}")
        runs, run = [], [wanted[0]]
        for i in wanted[1:]:  # split into runs separated by long gaps, each reached by its own seek
            if i - run[-1] > self.seek_gap:
                runs.append(run)
                run = []
            run.append(i)
        runs.append(run)
        frames: dict[int, np.ndarray] = {}
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                fps = float(stream.average_rate or stream.guessed_rate or 30)
                for run in runs:
                    self._decode_run(container, stream, fps, run, frames)
                    if any(i not in frames for i in run):  # a seek that landed past the target: from the start
                        container.seek(0, stream=stream, backward=True, any_frame=False)
                        self._decode_run(container, stream, fps, run, frames, seek=False)
        except av.FFmpegError as err:
            raise VideoReadError(f"{path}: decoding failed: {err}") from err
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise VideoReadError(f"{path}: frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be "
                                 f"decoded (the video is shorter than expected or truncated)")
        return np.stack([frames[i] for i in indices])

    def _decode_run(self, container, stream, fps, run, frames, seek=True):
        if seek and run[0] > 0:
            start = stream.start_time or 0
            target = start + int(run[0] / fps / stream.time_base)
            container.seek(target, stream=stream, backward=True, any_frame=False)
        wanted = set(run)
        for frame in container.decode(stream):
            self.frames_decoded += 1
            if frame.pts is None:
                continue
            idx = _frame_index(frame, stream, fps)
            if idx in wanted:
                frames[idx] = frame.to_ndarray(format="rgb24")
            if idx >= run[-1]:
                break


class FrameFolderBackend:
    """Pre-extracted frames (`img_00001.jpg`, EPIC's `frame_0000000001.jpg`): frame i is file
    `template.format(i + offset)`."""

    name = "frames"

    def __init__(self, template: str = "img_{:05d}.jpg", offset: int = 1, fps: float = 30.0):
        self.template, self.offset, self.fps = template, offset, fps

    def info(self, path: str) -> VideoInfo:
        prefix, suffix = self.template.split("{")[0], self.template.rsplit(".", 1)[-1]
        names = sorted(n for n in os.listdir(path) if n.startswith(prefix) and n.endswith(suffix))
        if not names:
            raise VideoReadError(f"{path}: no frames named like {self.template}")
        first = self._load(Path(path) / names[0])
        return VideoInfo(len(names), self.fps, first.shape[0], first.shape[1])

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        cache = {i: self._load(Path(path) / self.template.format(i + self.offset)) for i in set(indices)}
        return np.stack([cache[i] for i in indices])

    @staticmethod
    def _load(file: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(file) as img:
                return np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as err:
            raise VideoReadError(f"{file}: cannot read frame: {err}") from err


def _torchcodec_backend():
    """torchcodec (optional, needs the system FFmpeg): exact frame-index access."""
    from torchcodec.decoders import VideoDecoder

    class TorchCodecBackend:
        name = "torchcodec"

        def info(self, path: str) -> VideoInfo:
            meta = VideoDecoder(path).metadata
            return VideoInfo(meta.num_frames, float(meta.average_fps), meta.height, meta.width)

        def read(self, path: str, indices: list[int]) -> np.ndarray:
            try:
                batch = VideoDecoder(path, dimension_order="NHWC").get_frames_at(indices)
            except (RuntimeError, IndexError, ValueError) as err:
                raise VideoReadError(f"{path}: {err}") from err
            return batch.data.numpy()

    return TorchCodecBackend()


_BACKENDS = {"pyav": PyAVBackend, "frames": FrameFolderBackend, "torchcodec": _torchcodec_backend}


def get_backend(name: str | None = None, **kwargs):
    name = name or "pyav"
    if name not in _BACKENDS:
        raise ValueError(f"unknown video backend {name!r}; backends: {', '.join(_BACKENDS)}")
    return _BACKENDS[name](**kwargs)


def _backend_for(path: str, backend):
    if backend is not None and not isinstance(backend, str):
        return backend
    if backend is None and os.path.isdir(path):
        return FrameFolderBackend()
    return get_backend(backend)


def video_info(path: str | os.PathLike, backend=None) -> VideoInfo:
    path = str(path)
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file")
    return _backend_for(path, backend).info(path)


def read_frames(path: str | os.PathLike, indices, backend=None) -> torch.Tensor:
    """Frames `indices` (any order, repeats allowed) of a video file or frame folder as a uint8
    tensor (T, H, W, 3), RGB, identical to the same frames of a full decode."""
    path = str(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("read_frames needs at least one frame index")
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file")
    return torch.from_numpy(_backend_for(path, backend).read(path, indices))
