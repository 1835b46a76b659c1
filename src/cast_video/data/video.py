"""Decoding exactly the frames a clip needs, from video files or folders of extracted frames.

A backend reads frames by index. PyAV (bundled FFmpeg) is the default: it seeks to the keyframe
before the first wanted frame and decodes forward, seeking again across long gaps, so 16 frames of a
one-hour EPIC video never cost a full decode. A backend returns exactly the frames asked for or
raises `VideoReadError` naming the file: a truncated file can open fine and then end early, and a
silently shorter clip (or a clip of zeros) would poison training without anyone noticing.

Frame i is the frame whose presentation time is i / fps after the stream's start, which is what a
plain decode from the start yields as its i-th frame for constant-frame-rate video (all of K400,
SSV2 and EK100).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from ..errors import ConfigError, VideoReadError  # noqa: F401  (VideoReadError re-exported)


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, IndexError)


class _NoTimestamps(Exception):
    """Frames without presentation times: their index can only be known by counting from the start."""


def _fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or stream.base_rate or 30)


def _frame_index(frame: av.VideoFrame, stream, fps: float) -> int:
    if frame.pts is None:
        raise _NoTimestamps
    return round(float((frame.pts - (stream.start_time or 0)) * stream.time_base) * fps)


class PyAVBackend:
    """Seek-and-decode with PyAV. `seek_gap`: a gap of more frames than this between two wanted
    frames is crossed by seeking instead of decoding through it (a GOP is rarely over 300 frames,
    so decoding 96 frames is about what a seek costs). `threads`: FFmpeg's decoder threads (0: its
    own choice, all cores; the dataset sets it per loader worker, see `dataset.decode_threads`)."""

    name = "pyav"

    def __init__(self, seek_gap: int = 96, threads: int = 0):
        self.seek_gap = seek_gap
        self.threads = threads
        self.frames_decoded = 0  # a running count, for benchmarks and tests of the seeking

    def _open(self, path: str):
        try:
            container = av.open(path)
        except _DECODE_ERRORS as err:
            raise VideoReadError(f"{path}: cannot open video: {err}") from err
        if not container.streams.video:
            container.close()
            raise VideoReadError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_count = self.threads  # 1 must be said: FFmpeg's default (0) takes every core
        if self.threads != 1:
            stream.thread_type = "AUTO"
        return container, stream

    def info(self, path: str, exact: bool = False) -> VideoInfo:
        """Frame count, fps and size. The count the container claims (or its duration x fps) is
        checked by decoding the last GOP: a truncated file or a wrong header gives the real count
        (by decoding everything when the end cannot be reached). `exact`: always count by decoding."""
        container, stream = self._open(path)
        with container:
            fps = _fps(stream)
            height, width = stream.codec_context.height, stream.codec_context.width
            claimed = stream.frames
            if claimed <= 0 and stream.duration:
                claimed = round(float(stream.duration * stream.time_base) * fps)
            elif claimed <= 0 and container.duration:
                claimed = round(container.duration / av.time_base * fps)
            try:
                count = None if exact or claimed <= 0 else self._count_from(container, stream, fps, claimed - 1)
                if count is None:
                    count = self._count_all(container, stream)
            except _DECODE_ERRORS as err:
                raise VideoReadError(f"{path}: decoding failed while counting frames: {err}") from err
        if count == 0:
            raise VideoReadError(f"{path}: the video has no decodable frames")
        return VideoInfo(count, fps, height, width)

    def _count_from(self, container, stream, fps: float, last: int) -> int | None:
        """Decode from the keyframe before frame `last` to the end (a decoding error, as at the cut of
        a truncated file, is the end): the count, or None if nothing could be decoded there or frames
        lack timestamps."""
        self._seek(container, stream, fps, last)
        final = None
        try:
            for frame in container.decode(stream):
                self.frames_decoded += 1
                final = _frame_index(frame, stream, fps)
        except _NoTimestamps:
            return None
        except (av.FFmpegError, EOFError):
            pass
        return None if final is None else final + 1

    def _count_all(self, container, stream) -> int:
        """Frames decodable from the start, up to the end or the first decoding error."""
        container.seek(0, stream=stream, backward=True, any_frame=False)
        count = 0
        try:
            for _ in container.decode(stream):
                count += 1
        except (av.FFmpegError, EOFError):
            pass
        self.frames_decoded += count
        return count

    @staticmethod
    def _seek(container, stream, fps: float, index: int) -> None:
        """To the keyframe at or before frame `index`'s timestamp (a seek that still lands past it is
        caught by `read`, which then decodes from the start)."""
        target = (stream.start_time or 0) + round(index / fps / stream.time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        wanted = sorted(set(indices))
        if wanted[0] < 0:
            raise VideoReadError(f"{path}: negative frame index {wanted[0]}")
        runs, run = [], [wanted[0]]
        for i in wanted[1:]:  # split into runs separated by long gaps, each reached by its own seek
            if i - run[-1] > self.seek_gap:
                runs.append(run)
                run = []
            run.append(i)
        runs.append(run)
        frames: dict[int, np.ndarray] = {}
        container, stream = self._open(path)
        with container:
            fps = _fps(stream)
            try:
                for run in runs:
                    self._decode_run(container, stream, fps, run, frames)
                    if any(i not in frames for i in run):  # a seek that landed past the target: from the start
                        container.seek(0, stream=stream, backward=True, any_frame=False)
                        self._decode_run(container, stream, fps, run, frames, seek=False)
            except _NoTimestamps:
                self._decode_counting(container, stream, wanted, frames)
            except _DECODE_ERRORS as err:
                raise VideoReadError(f"{path}: decoding failed: {err}") from err
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise VideoReadError(f"{path}: frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be "
                                 f"decoded (the video is shorter than expected or truncated)")
        return np.stack([frames[i] for i in indices])  # (T, H, W, 3)

    def _decode_run(self, container, stream, fps, run, frames, seek=True):
        if seek and run[0] > 0:
            self._seek(container, stream, fps, run[0])
        wanted = set(run)
        for frame in container.decode(stream):
            self.frames_decoded += 1
            idx = _frame_index(frame, stream, fps)
            if idx in wanted:
                frames[idx] = frame.to_ndarray(format="rgb24")
            if idx >= run[-1]:
                break

    def _decode_counting(self, container, stream, wanted, frames):
        """Fallback for streams without timestamps: frame i is the i-th decoded frame."""
        container.seek(0, stream=stream, backward=True, any_frame=False)
        targets = set(wanted)
        for idx, frame in enumerate(container.decode(stream)):
            self.frames_decoded += 1
            if idx in targets:
                frames[idx] = frame.to_ndarray(format="rgb24")
            if idx >= wanted[-1]:
                break


_FRAME_NAME = re.compile(r"^(.*?)(\d+)\.(jpe?g|png)$", re.IGNORECASE)


def detect_frame_template(folder: str | os.PathLike) -> tuple[str, int, int]:
    """(template, first number, count) of the frame files in a folder: `img_00001.jpg` gives
    ('img_{:05d}.jpg', 1, n); EPIC's `frame_0000000001.jpg` gives ('frame_{:010d}.jpg', 1, n)."""
    groups: Counter = Counter()
    first: dict[tuple, int] = {}
    for name in os.listdir(folder):
        m = _FRAME_NAME.match(name)
        if m:
            key = (m.group(1), len(m.group(2)), m.group(3))
            groups[key] += 1
            first[key] = min(first.get(key, 1 << 62), int(m.group(2)))
    if not groups:
        raise VideoReadError(f"{folder}: no frame images (like img_00001.jpg) in the folder")
    key, count = groups.most_common(1)[0]
    prefix, width, ext = key
    return f"{prefix}{{:0{width}d}}.{ext}", first[key], count


def _load_image(file: Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB: with Pillow when installed, else with PyAV's image2 demuxer."""
    if importlib.util.find_spec("PIL") is not None:
        from PIL import Image

        try:
            with Image.open(file) as img:
                return np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as err:
            raise VideoReadError(f"{file}: cannot read frame: {err}") from err
    try:
        with av.open(str(file)) as container:
            return next(container.decode(video=0)).to_ndarray(format="rgb24")
    except (*_DECODE_ERRORS, StopIteration) as err:
        raise VideoReadError(f"{file}: cannot read frame: {err}") from err


class FrameFolderBackend:
    """Pre-extracted frames (`img_00001.jpg`, EPIC's `frame_0000000001.jpg`): frame i is file
    `template.format(i + offset)`. Without a template, it is detected from the folder's files (one
    directory listing; give the template for folders of 100k EPIC frames)."""

    name = "frames"

    def __init__(self, template: str | None = None, offset: int = 1, fps: float = 30.0):
        self.template, self.offset, self.fps = template, offset, fps

    def _layout(self, path: str) -> tuple[str, int]:
        if self.template is not None:
            return self.template, self.offset
        template, first, _ = detect_frame_template(path)
        return template, first

    def info(self, path: str, exact: bool = False) -> VideoInfo:
        template = self.template or detect_frame_template(path)[0]
        prefix, suffix = template.split("{")[0], template.rsplit(".", 1)[-1]
        count = sum(1 for n in os.listdir(path) if n.startswith(prefix) and n.endswith(suffix))
        if not count:
            raise VideoReadError(f"{path}: no frames named like {template}")
        first = self.read(path, [0])[0]
        return VideoInfo(count, self.fps, first.shape[0], first.shape[1])

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        if min(indices) < 0:
            raise VideoReadError(f"{path}: negative frame index {min(indices)}")
        template, offset = self._layout(path)
        cache = {i: _load_image(Path(path) / template.format(i + offset)) for i in set(indices)}
        return np.stack([cache[i] for i in indices])  # (T, H, W, 3)


class DecordBackend:
    """decord (optional): random access by frame index on a fresh reader per call."""

    name = "decord"

    def __init__(self, threads: int = 1):
        import decord

        self._decord, self.threads = decord, threads

    def info(self, path: str, exact: bool = False) -> VideoInfo:
        try:
            vr = self._decord.VideoReader(path, num_threads=1)
            h, w = vr[0].shape[:2]
            return VideoInfo(len(vr), float(vr.get_avg_fps()), h, w)
        except (RuntimeError, IndexError) as err:
            raise VideoReadError(f"{path}: {err}") from err

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        try:
            return self._decord.VideoReader(path, num_threads=self.threads).get_batch(indices).asnumpy()
        except (RuntimeError, IndexError) as err:
            raise VideoReadError(f"{path}: {err}") from err


class TorchCodecBackend:
    """torchcodec (optional, needs the system FFmpeg): exact frame-index access."""

    name = "torchcodec"

    def __init__(self, threads: int = 1):
        try:
            from torchcodec.decoders import VideoDecoder
        except (OSError, RuntimeError) as err:  # installed, but the system FFmpeg libraries are missing
            raise ConfigError(f"video backend 'torchcodec' cannot load the system FFmpeg libraries "
                              f"(apt-get install ffmpeg): {str(err).splitlines()[0]}") from err
        self._decoder, self.threads = VideoDecoder, threads

    def info(self, path: str, exact: bool = False) -> VideoInfo:
        try:
            meta = self._decoder(path, seek_mode="exact" if exact else "approximate").metadata
        except (RuntimeError, ValueError) as err:
            raise VideoReadError(f"{path}: {err}") from err
        return VideoInfo(meta.num_frames, float(meta.average_fps), meta.height, meta.width)

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        try:
            batch = self._decoder(path, dimension_order="NHWC", num_ffmpeg_threads=self.threads).get_frames_at(indices)
        except (RuntimeError, IndexError, ValueError) as err:
            raise VideoReadError(f"{path}: {err}") from err
        return batch.data.numpy()


_BACKENDS = {"pyav": (PyAVBackend, "av"), "frames": (FrameFolderBackend, None),
             "decord": (DecordBackend, "decord"), "torchcodec": (TorchCodecBackend, "torchcodec")}


def available_backends() -> list[str]:
    """Video backends whose library is installed (decord and torchcodec are optional)."""
    return [n for n, (_, module) in _BACKENDS.items() if module is None or importlib.util.find_spec(module)]


def get_backend(name: str | None = None, **kwargs):
    name = name or "pyav"
    if name not in _BACKENDS:
        raise ConfigError(f"unknown video backend {name!r}; backends: {', '.join(_BACKENDS)}")
    if name not in available_backends():
        raise ConfigError(f"video backend {name!r} needs the {_BACKENDS[name][1]!r} package, which is not installed; "
                          f"available: {', '.join(available_backends())}")
    return _BACKENDS[name][0](**kwargs)


def _backend_for(path: str, backend):
    if backend is not None and not isinstance(backend, str):
        return backend
    if os.path.isdir(path):
        return FrameFolderBackend()
    return get_backend(backend)


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoReadError(f"{path}: empty file")


def video_info(path: str | os.PathLike, backend=None, exact: bool = False) -> VideoInfo:
    """Frame count, fps, height and width of a video file or frame folder (see `PyAVBackend.info`)."""
    path = str(path)
    _check_exists(path)
    return _backend_for(path, backend).info(path, exact=exact)


def num_frames(path: str | os.PathLike, backend=None, exact: bool = False) -> int:
    return video_info(path, backend, exact).num_frames


def read_frames(path: str | os.PathLike, indices, backend=None) -> torch.Tensor:
    """Frames `indices` (any order, repeats allowed) of a video file or frame folder as a uint8
    tensor (T, H, W, 3), RGB, identical to the same frames of a full decode. `backend`: a name
    (`available_backends()`), a backend object, or None for PyAV (frame folders: detected)."""
    path = str(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("read_frames needs at least one frame index")
    _check_exists(path)
    return torch.from_numpy(_backend_for(path, backend).read(path, indices))
