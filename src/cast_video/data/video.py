"""Decoding exactly the frames a clip needs, from video files or folders of extracted frames.

A backend reads frames by index. PyAV (bundled FFmpeg) is the default: it seeks to the keyframe
before the first wanted frame and decodes forward, seeking again across long gaps, so 16 frames of a
one-hour EPIC video never cost a full decode. A backend returns exactly the frames asked for or
raises `VideoReadError` naming the file: a truncated file can open fine and then end early, and a
silently shorter clip (or a clip of zeros) would poison training without anyone noticing.

Frame i is the frame whose presentation time is i / fps after the stream's start, which is what a
plain decode from the start yields as its i-th frame for constant-frame-rate video (all of K400,
SSV2 and EK100).

`short_side` (DataConfig.decode_short_side): a backend returns frames already scaled so that their
short side is that size (never upscaled). PyAV and torchcodec scale inside FFmpeg, in the same pass
that converts YUV to RGB, so a 720p frame is never materialised as RGB at full size; decord and frame
folders are resized after decoding with the dataset's uint8 kernel (`resize_clip`).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import Interpolation

from ..errors import ConfigError, VideoReadError  # noqa: F401  (VideoReadError re-exported)


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, IndexError)

# swscale's bilinear filter (a triangle widened by the downscale factor: antialiased, as torch's
# `antialias=True`) with the chroma planes interpolated at full resolution: without FULL_CHR_* the
# 4:2:0 chroma is upsampled by pixel repetition and strong colour edges differ from decode-then-resize
# by up to 47 grey levels (bigbuckbunny at 224), with them by up to 18 (mean 1.2; docs/DATA.md).
_SCALE_FLAGS = int(Interpolation.BILINEAR | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP)


class _NoTimestamps(Exception):
    """Frames without presentation times: their index can only be known by counting from the start."""


def _fps(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or stream.base_rate or 30)


def _frame_index(frame: av.VideoFrame, stream, fps: float) -> int:
    if frame.pts is None:
        raise _NoTimestamps
    return round(float((frame.pts - (stream.start_time or 0)) * stream.time_base) * fps)


def scaled_size(height: int, width: int, short_side: int, even: bool = False) -> tuple[int, int]:
    """(height, width) with the short side at `short_side` and the aspect ratio kept; never upscaled
    (0, or a short side already at most `short_side`, keeps the size). `even`: both rounded to even
    sizes, as yuv420p encoding needs (`data prepare`)."""
    if short_side <= 0 or min(height, width) <= short_side:
        h, w = height, width
    else:
        scale = short_side / min(height, width)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        h, w = (short_side, w) if height <= width else (h, short_side)
    if even:
        h, w = max(2, h - h % 2), max(2, w - w % 2)
    return h, w


def resize_clip(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, 3, h, w), bilinear with antialiasing, in uint8: the decoded
    (T, H, W, 3) layout is channels-last, which PyTorch's uint8 kernel resizes without a float copy
    (a 16-frame 1080p crop: 25x faster than in float, within one grey level of it; docs/DATA.md)."""
    x = frames.permute(0, 3, 1, 2)  # (T, 3, H, W), channels-last strides
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


class _KeyframePlan:
    """Where the keyframes are, learned while decoding, to decide per wanted frame whether to seek.

    A seek lands on the keyframe at or before the target; it pays when that keyframe lies past the
    frame being decoded now, since everything between is skipped. With the keyframe period known (two
    keyframes seen; a fixed GOP, as `data prepare` writes and encoders write by default), the keyframe
    before a target is predicted exactly (the period is the gcd of the distances between the keyframes
    seen, since seeks skip some); before that, or once a prediction failed (a seek that landed no
    further than the frame decoded last: irregular GOPs, as scene cuts make), a gap of more than
    `seek_gap` frames is crossed by seeking. A seek that would skip fewer than `min_skip` frames is
    not taken: decoding a few frames costs less than a seek, which flushes the decoder (a dense clip
    takes every 4th frame, so at each keyframe a seek would skip 3). A wrong guess costs time,
    never frames: the frames returned are checked by their timestamps either way."""

    def __init__(self, seek_gap: int, min_skip: int):
        self.seek_gap, self.min_skip = seek_gap, min_skip
        self.last = -1  # the last keyframe seen
        self.period = 0  # gcd of the distances between the keyframes seen (seeks skip some)
        self.reliable = True

    def add(self, index: int) -> None:
        if index > self.last:
            if self.last >= 0:
                self.period = math.gcd(self.period, index - self.last)
            self.last = index

    def keyframe_before(self, target: int) -> int | None:
        if not self.reliable or not self.period or target < self.last:
            return None
        return self.last + (target - self.last) // self.period * self.period

    def should_seek(self, position: int, target: int) -> bool:
        """`position`: the last decoded frame; the decoder's next frame is position + 1."""
        if target <= position + 1:
            return False
        key = self.keyframe_before(target)
        if key is not None:
            return key - (position + 1) >= self.min_skip
        return target - position > self.seek_gap


def _take(wanted: list[int], i: int, idx: int, frame, frames: dict, convert: dict) -> int:
    """Keep decoded frame `idx` if it is `wanted[i]`; the next position in `wanted`. Wanted frames the
    stream skipped (no frame with their timestamp) are passed over, and reported missing by `read`."""
    while i < len(wanted) and wanted[i] < idx:
        i += 1
    if i < len(wanted) and wanted[i] == idx:
        frames[idx] = frame.to_ndarray(**convert)
        i += 1
    return i


class PyAVBackend:
    """Seek-and-decode with PyAV. Seeks are planned per wanted frame (`_KeyframePlan`): one seek to
    the keyframe before the clip's first frame, then forward decoding, and another seek wherever a
    keyframe lies between the frame decoded last and the next wanted one and the seek skips at least
    `min_seek_skip` frames (4: docs/DATA.md measures it). `plan_seeks=False`: seek only
    across gaps of more than `seek_gap` frames (96: a GOP is rarely over 300 frames, so decoding 96
    frames is about what a seek costs). `threads`: FFmpeg's decoder threads (0: its own choice, all
    cores; the dataset sets it per loader worker, see `dataset.decode_threads`). `short_side`: scale
    on decode (module docstring), with swscale's bilinear filter (`_SCALE_FLAGS`)."""

    name = "pyav"

    def __init__(self, seek_gap: int = 96, threads: int = 0, short_side: int = 0, plan_seeks: bool = True,
                 min_seek_skip: int = 4):
        self.seek_gap, self.min_seek_skip = seek_gap, min_seek_skip
        self.threads = threads
        self.short_side = short_side
        self.plan_seeks = plan_seeks
        self.frames_decoded = 0  # a running count, for benchmarks and tests of the seeking
        self.seeks = 0

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
        """Frame count, fps and size (the size frames are returned at, after `short_side`). The count
        the container claims (or its duration x fps) is checked by decoding the last GOP: a truncated
        file or a wrong header gives the real count (by decoding everything when the end cannot be
        reached). `exact`: always count by decoding."""
        container, stream = self._open(path)
        with container:
            fps = _fps(stream)
            height, width = scaled_size(stream.codec_context.height, stream.codec_context.width, self.short_side)
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

    def _seek(self, container, stream, fps: float, index: int) -> None:
        """To the keyframe at or before frame `index`'s timestamp (a seek that still lands past it is
        caught by `_decode_planned`, which then decodes from the start)."""
        self.seeks += 1
        target = (stream.start_time or 0) + round(index / fps / stream.time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        wanted = sorted(set(indices))
        if wanted[0] < 0:
            raise VideoReadError(f"{path}: negative frame index {wanted[0]}")
        frames: dict[int, np.ndarray] = {}
        container, stream = self._open(path)
        with container:
            fps = _fps(stream)
            h, w = scaled_size(stream.codec_context.height, stream.codec_context.width, self.short_side)
            convert = {"format": "rgb24"}
            if (h, w) != (stream.codec_context.height, stream.codec_context.width):
                convert.update(width=w, height=h, interpolation=_SCALE_FLAGS)
            try:
                self._decode_planned(container, stream, fps, wanted, frames, convert)
            except _NoTimestamps:
                self._decode_counting(container, stream, wanted, frames, convert)
            except _DECODE_ERRORS as err:
                raise VideoReadError(f"{path}: decoding failed: {err}") from err
        missing = [i for i in wanted if i not in frames]
        if missing:
            raise VideoReadError(f"{path}: frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be "
                                 f"decoded (the video is shorter than expected or truncated)")
        return np.stack([frames[i] for i in indices])  # (T, H, W, 3)

    def _decode_planned(self, container, stream, fps, wanted, frames, convert) -> None:
        """Decode `wanted` (sorted) forward, seeking where `_KeyframePlan` says it pays, at most once
        per wanted frame. A seek that lands past its target (a broken index) falls back to decoding
        from the start, never seeking again; one that lands at or before the frame decoded last marks
        the plan's guess wrong."""
        plan = _KeyframePlan(self.seek_gap, self.min_seek_skip)
        if not self.plan_seeks:
            plan.reliable = False
        position, frames_iter, seeked, may_seek, i, decided = -1, None, False, True, 0, -1
        while i < len(wanted):
            target = wanted[i]
            if frames_iter is None or (may_seek and decided < target and plan.should_seek(position, target)):
                decided = target  # at most one seek per wanted frame: a seek that lands early is not repeated
                if target > 0 and may_seek:
                    self._seek(container, stream, fps, target)
                    seeked = True
                frames_iter = container.decode(stream)
            frame = next(frames_iter, None)
            if frame is None:
                return  # the end of the stream: what is missing is reported by `read`
            self.frames_decoded += 1
            idx = _frame_index(frame, stream, fps)
            if seeked:
                seeked = False
                if idx > target:  # landed past the target: decode everything from the start
                    container.seek(0, stream=stream, backward=True, any_frame=False)
                    frames_iter, may_seek, position = container.decode(stream), False, -1
                    continue
                if idx <= position:
                    plan.reliable = False
            if frame.key_frame:
                plan.add(idx)
            position = idx
            i = _take(wanted, i, idx, frame, frames, convert)

    def _decode_counting(self, container, stream, wanted, frames, convert):
        """Fallback for streams without timestamps: frame i is the i-th decoded frame."""
        container.seek(0, stream=stream, backward=True, any_frame=False)
        targets = set(wanted)
        for idx, frame in enumerate(container.decode(stream)):
            self.frames_decoded += 1
            if idx in targets:
                frames[idx] = frame.to_ndarray(**convert)
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

    def __init__(self, template: str | None = None, offset: int = 1, fps: float = 30.0, short_side: int = 0):
        self.template, self.offset, self.fps, self.short_side = template, offset, fps, short_side

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
        return _scale_after(np.stack([cache[i] for i in indices]), self.short_side)  # (T, H, W, 3)


def _scale_after(frames: np.ndarray, short_side: int) -> np.ndarray:
    """`short_side` for backends that cannot scale on decode: (T, H, W, 3) resized with `resize_clip`."""
    size = scaled_size(*frames.shape[1:3], short_side)
    if size == frames.shape[1:3]:
        return frames
    return resize_clip(torch.from_numpy(frames), size).permute(0, 2, 3, 1).contiguous().numpy()  # (T, h, w, 3)


class DecordBackend:
    """decord (optional): random access by frame index on a fresh reader per call."""

    name = "decord"

    def __init__(self, threads: int = 1, short_side: int = 0):
        import decord

        self._decord, self.threads, self.short_side = decord, threads, short_side

    def info(self, path: str, exact: bool = False) -> VideoInfo:
        try:
            vr = self._decord.VideoReader(path, num_threads=1)
            h, w = scaled_size(*vr[0].shape[:2], self.short_side)
            return VideoInfo(len(vr), float(vr.get_avg_fps()), h, w)
        except (RuntimeError, IndexError) as err:
            raise VideoReadError(f"{path}: {err}") from err

    def read(self, path: str, indices: list[int]) -> np.ndarray:
        try:
            frames = self._decord.VideoReader(path, num_threads=self.threads).get_batch(indices).asnumpy()
        except (RuntimeError, IndexError) as err:
            raise VideoReadError(f"{path}: {err}") from err
        return _scale_after(frames, self.short_side)


class TorchCodecBackend:
    """torchcodec (optional, needs the system FFmpeg): exact frame-index access. `short_side`: scaled
    inside FFmpeg by torchcodec's `Resize` transform (bilinear, antialiased). `device="cuda"`: decoded
    on the GPU (NVDEC) and returned as a CUDA tensor; the caller must not be a forked DataLoader worker
    (CUDA cannot be used after fork), so `decode_device: cuda` goes with `num_workers: 0`."""

    name = "torchcodec"

    def __init__(self, threads: int = 1, short_side: int = 0, device: str = "cpu"):
        try:
            from torchcodec.decoders import VideoDecoder
        except (OSError, RuntimeError) as err:  # installed, but the system FFmpeg libraries are missing
            raise ConfigError(f"video backend 'torchcodec' cannot load the system FFmpeg libraries "
                              f"(apt-get install ffmpeg): {str(err).splitlines()[0]}") from err
        if device != "cpu":
            check_cuda_decoding(device)
        self._decoder, self.threads, self.short_side, self.device = VideoDecoder, threads, short_side, device

    def info(self, path: str, exact: bool = False) -> VideoInfo:
        try:
            meta = self._decoder(path, seek_mode="exact" if exact else "approximate").metadata
        except (RuntimeError, ValueError) as err:
            raise VideoReadError(f"{path}: {err}") from err
        h, w = scaled_size(meta.height, meta.width, self.short_side)
        return VideoInfo(meta.num_frames, float(meta.average_fps), h, w)

    def read(self, path: str, indices: list[int]) -> np.ndarray | torch.Tensor:
        options = {"dimension_order": "NHWC", "num_ffmpeg_threads": self.threads, "device": self.device}
        try:
            if self.short_side:
                from torchcodec.transforms import Resize

                meta = self._decoder(path, seek_mode="approximate").metadata
                size = scaled_size(meta.height, meta.width, self.short_side)
                if size != (meta.height, meta.width):
                    options["transforms"] = [Resize(size)]
            batch = self._decoder(path, **options).get_frames_at(indices)
        except (RuntimeError, IndexError, ValueError) as err:
            raise VideoReadError(f"{path}: {err}") from err
        return batch.data if self.device != "cpu" else batch.data.numpy()


def check_cuda_decoding(device: str) -> None:
    """A one-line `ConfigError` unless `device` is a CUDA device that torchcodec can decode on."""
    if not device.startswith("cuda"):
        raise ConfigError(f"data.decode_device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"data.decode_device: {device!r}, but this torch build sees no CUDA device "
                          f"(torch {torch.__version__}); use decode_device: cpu")


_BACKENDS = {"pyav": (PyAVBackend, "av"), "frames": (FrameFolderBackend, None),
             "decord": (DecordBackend, "decord"), "torchcodec": (TorchCodecBackend, "torchcodec")}


def available_backends() -> list[str]:
    """Video backends whose library is installed (decord and torchcodec are optional)."""
    return [n for n, (_, module) in _BACKENDS.items() if module is None or importlib.util.find_spec(module)]


def get_backend(name: str | None = None, **kwargs):
    """A backend by name (None: PyAV); `kwargs` go to its constructor (threads, short_side, ...)."""
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
    frames = _backend_for(path, backend).read(path, indices)
    return frames if isinstance(frames, torch.Tensor) else torch.from_numpy(frames)
