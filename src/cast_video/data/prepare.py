"""`cast-video data prepare`: re-encode a dataset once, the way the field prepares K400 / SSV2 / EK100.

Training reads each video many times (epochs x clips), so it pays to decode small, seekable files:
VideoMAE and CAST train from videos whose short side is resized to 320 (the common recipe is
`ffmpeg -vf scale=-2:320 -c:v libx264 -an`). Each video becomes H.264 (libx264, `crf`, default 23,
x264's own default; `preset` fast; `tune` fastdecode, which turns off CABAC and deblocking: 1.9x the
decoding speed for 1.3x the size, docs/DATA.md), yuv420p, short side `short_side` (never upscaled; the long side
keeps the aspect ratio, rounded to an even size as yuv420p needs), a keyframe exactly every `gop`
frames (scene-cut keyframes off), so that a clip's seek lands at most `gop - 1` frames before its
first frame, the source's frame rate kept, and audio dropped. Frame i of the output is the i-th decoded
frame of the source, at constant frame rate, which is what the data layer's frame indices mean, so
EK100's `start_frame` / `stop_frame` stay valid. Or, with `frames="jpg"`, each video becomes a folder
of JPEGs `frame_0000000001.jpg ...` (EK100's naming, the data layer's default `frame_file_template`).

It is done in-process with PyAV, not by calling the ffmpeg program: PyAV is already the library's
decoder (its wheels bundle FFmpeg with libx264), so prepare runs wherever training runs, with no
system FFmpeg, and its scaling is the same swscale code that scales on decode (`video.scaled_size`).
A file that cannot be decoded is reported as a `Result` naming it; nothing else is lost.

Resumable: a finished output is skipped; outputs are written to a hidden temporary name
(`.NAME.XXXX.tmp`) and renamed into place when complete, so a killed run never leaves a file that
looks finished (its leftover temporaries are removed when that file is redone).

The source's folder tree is mirrored, so annotation paths relative to the dataset root stay valid
with `data.root` pointing at DST. Every other file under SRC (annotation CSV / JSON / TXT, class
lists, frame images) is copied to the same place; text annotation files are rewritten where a path
changes: the absolute SRC prefix becomes DST, and a video whose container cannot hold H.264 (`.webm`,
`.avi`) becomes `.mp4` (with `frames`, a video becomes a folder without suffix), so those suffixes
are rewritten too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from ..errors import ConfigError, VideoReadError
from ..files import atomic_open, atomic_write_text
from .annotations import VIDEO_SUFFIXES
from .video import PyAVBackend, scaled_size

log = logging.getLogger(__name__)

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}  # hold H.264; others -> .mp4
TEXT_SUFFIXES = (".csv", ".txt", ".json", ".tsv", ".lst", ".list")
FRAME_TEMPLATE = "frame_{:010d}.jpg"  # EK100's; DataConfig.frame_file_template's default


@dataclass(frozen=True)
class PrepareOptions:
    short_side: int = 320
    gop: int = 16
    crf: int = 23
    preset: str = "fast"
    tune: str = "fastdecode"  # x264's: no CABAC, no deblocking; "" for x264's default
    frames: str = ""  # "" (re-encode) or "jpg" (a folder of frames per video)
    jpeg_quality: int = 2  # FFmpeg's -q:v scale, 2 (best) .. 31
    threads: int = 1  # encoder threads per worker process

    def __post_init__(self):
        if self.short_side < 2 or self.gop < 1:
            raise ConfigError(f"--short-side must be >= 2 and --gop >= 1, got {self.short_side} and {self.gop}")
        if self.frames not in ("", "jpg"):
            raise ConfigError(f"--frames must be 'jpg', got {self.frames!r}")
        if not 0 <= self.crf <= 51 or not 2 <= self.jpeg_quality <= 31:
            raise ConfigError(f"--crf must be in 0..51 and --jpeg-quality in 2..31, "
                              f"got {self.crf} and {self.jpeg_quality}")


@dataclass(frozen=True)
class Result:
    source: Path
    target: Path
    status: str  # "done", "skipped" (already finished), "copied" (not a video) or "failed"
    reason: str = ""


def target_path(rel: Path, opts: PrepareOptions) -> Path:
    """Where the video at `rel` (relative to SRC) goes, relative to DST."""
    if opts.frames:
        return rel.with_suffix("")
    return rel if rel.suffix.lower() in CONTAINERS else rel.with_suffix(".mp4")


def plan(src: Path, dst: Path, opts: PrepareOptions) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(videos, other files) as (source, target) pairs, sorted, with targets under `dst`."""
    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder")
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"{dst}: the output folder must not be inside the source folder {src}")
    videos, others = [], []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            rel = file.relative_to(src)
            if name.startswith(".") and name.endswith(".tmp"):
                continue
            if file.suffix.lower() in VIDEO_SUFFIXES:
                videos.append((file, dst / target_path(rel, opts)))
            else:
                others.append((file, dst / rel))
    return videos, others


def _remove_stale(target: Path) -> None:
    """Temporaries of `target` left by a killed run (files from `atomic_open`, folders from frames)."""
    if not target.parent.is_dir():
        return
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _encode_video(source: av.container.InputContainer, stream, out, opts: PrepareOptions) -> int:
    rate = Fraction(stream.average_rate or stream.guessed_rate or 30)
    h, w = scaled_size(stream.codec_context.height, stream.codec_context.width, opts.short_side, even=True)
    enc = out.add_stream("libx264", rate=rate)
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.thread_count = opts.threads
    enc.options = {"crf": str(opts.crf), "preset": opts.preset, "g": str(opts.gop), "keyint_min": str(opts.gop),
                   "sc_threshold": "0", **({"tune": opts.tune} if opts.tune else {})}
    count = 0
    for count, frame in enumerate(source.decode(stream), start=1):
        small = frame.reformat(width=w, height=h, format="yuv420p", interpolation="BICUBIC")
        small.pts, small.time_base = count - 1, 1 / rate  # constant frame rate: frame i is the i-th decoded one
        out.mux(enc.encode(small))
    _check_complete(source, stream, count)
    out.mux(enc.encode(None))
    return count


def _check_complete(source: av.container.InputContainer, stream, count: int) -> None:
    """A video stream without a single frame fails the file. (A file cut short fails at its cut: the
    demuxer reports invalid data there, tested on mp4 cut at 30 % to 95 %.)"""
    if count == 0:
        raise VideoReadError(f"{source.name}: the video has no decodable frames")


def _write_frames(source: av.container.InputContainer, stream, folder: Path, opts: PrepareOptions) -> int:
    h, w = scaled_size(stream.codec_context.height, stream.codec_context.width, opts.short_side, even=True)
    count = 0
    for count, frame in enumerate(source.decode(stream), start=1):
        jpeg = av.CodecContext.create("mjpeg", "w")
        jpeg.width, jpeg.height, jpeg.pix_fmt, jpeg.time_base = w, h, "yuvj420p", Fraction(1, 30)
        jpeg.options = {"qmin": str(opts.jpeg_quality), "qmax": str(opts.jpeg_quality)}
        small = frame.reformat(width=w, height=h, format="yuvj420p", interpolation="BICUBIC")
        (folder / FRAME_TEMPLATE.format(count)).write_bytes(b"".join(bytes(p) for p in [*jpeg.encode(small),
                                                                                         *jpeg.encode(None)]))
    _check_complete(source, stream, count)
    return count


def prepare_video(source: Path, target: Path, opts: PrepareOptions) -> Result:
    """Re-encode (or extract the frames of) one video; never raises for a bad input, returns "failed"."""
    if target.exists():
        return Result(source, target, "skipped")
    _remove_stale(target)
    try:
        container, stream = PyAVBackend(threads=1)._open(str(source))  # one decoder thread: a process per video
        with container:
            if opts.frames:
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
                try:
                    _write_frames(container, stream, tmp, opts)
                    os.chmod(tmp, 0o755)
                    os.replace(tmp, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            else:
                fmt = CONTAINERS[target.suffix.lower()]
                with atomic_open(target, "wb") as f, av.open(f, "w", format=fmt) as out:
                    _encode_video(container, stream, out, opts)
    except (VideoReadError, av.FFmpegError, OSError, ValueError, EOFError) as err:
        reason = str(err) if isinstance(err, VideoReadError) else f"{source}: {type(err).__name__}: {err}"
        return Result(source, target, "failed", reason)
    return Result(source, target, "done")


def _rewrite(text: str, src: Path, dst: Path, renamed: set[str], opts: PrepareOptions) -> str:
    """Annotation text pointing at DST: the absolute SRC prefix, and the suffixes of renamed videos."""
    text = text.replace(str(src.resolve()), str(dst.resolve()))
    for suffix in sorted(renamed):
        new = "" if opts.frames else ".mp4"
        text = re.sub(rf"(?<=[\w\-]){re.escape(suffix)}\b", new, text)
    return text


def copy_other(source: Path, target: Path, src: Path, dst: Path, renamed: set[str], opts: PrepareOptions) -> Result:
    """Copy a non-video file to its mirrored place; text annotation files are rewritten (`_rewrite`)."""
    if target.exists():
        return Result(source, target, "skipped")
    if source.suffix.lower() in TEXT_SUFFIXES:
        try:
            text = source.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            atomic_write_text(target, _rewrite(text, src, dst, renamed, opts))
            return Result(source, target, "copied")
    with source.open("rb") as f_in, atomic_open(target, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    return Result(source, target, "copied")


def renamed_suffixes(videos: list[tuple[Path, Path]]) -> set[str]:
    """The video suffixes whose files change name (e.g. `.webm` -> `.mp4`), as the sources spell them."""
    return {s.suffix for s, t in videos if s.suffix != t.suffix}


def prepare_dataset(src: str | os.PathLike, dst: str | os.PathLike, opts: PrepareOptions,
                    workers: int = 1) -> Iterator[Result]:
    """Every file under `src` into `dst` (see the module docstring), videos on `workers` processes,
    yielding one `Result` per file as it finishes (in completion order), for a progress bar."""
    src, dst = Path(src), Path(dst)
    videos, others = plan(src, dst, opts)
    renamed = renamed_suffixes(videos)
    for source, target in others:
        yield copy_other(source, target, src, dst, renamed, opts)
    todo = [(s, t) for s, t in videos if not t.exists()]
    for source, target in videos:
        if target.exists():
            yield Result(source, target, "skipped")
    if workers <= 1:
        for source, target in todo:
            yield prepare_video(source, target, opts)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(prepare_video, s, t, opts) for s, t in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                with contextlib.suppress(Exception):
                    future.cancel()
