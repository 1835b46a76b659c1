"""What a loader worker spends on one 16-frame 1080p training clip, with one thread.

    .venv/bin/python benchmarks/bench_worker_resize.py [--repeats 5] [--json]

A synthetic 1920x1080 H.264 video (moving noise texture, so decoding costs what real footage costs);
16 frames decoded with PyAV on one decoder thread; the training crop (here the whole frame: the most
a random resized crop can cover) resized to 224x224 with antialiasing, once through float32 (how the
worker did it before: a float copy of the crop) and once in uint8 (how it does it now). Best of
`--repeats` runs; torch limited to one thread, as in a DataLoader worker.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from cast_video.data.dataset import _resize
from cast_video.data.video import PyAVBackend


def synthetic_1080p(path: Path, frames: int = 48) -> Path:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (1080, 1920 + frames * 8, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"g": "250", "preset": "veryfast"}
        for i in range(frames):
            img = np.ascontiguousarray(texture[:, 8 * i: 8 * i + 1920])
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def float_resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The previous worker resize: the crop converted to float32, resized, rounded back to uint8."""
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3)


def best_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return 1000 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(synthetic_1080p(Path(tmp) / "hd.mp4"))
        indices = list(range(0, 48, 3))  # 16 frames, segment-like spacing
        backend = PyAVBackend(threads=1)
        decode = best_ms(lambda: backend.read(path, indices), args.repeats)
        frames = torch.from_numpy(backend.read(path, indices))  # (16, 1080, 1920, 3)
    size = (224, 224)
    old = best_ms(lambda: float_resize(frames, size), args.repeats)
    new = best_ms(lambda: _resize(frames, size), args.repeats)
    diff = (float_resize(frames, size).int() - _resize(frames, size).int()).abs()
    rows = {"decode 16 frames 1920x1080, pyav, 1 thread (ms)": round(decode, 1),
            "resize to 224, float32 (before) (ms)": round(old, 1),
            "resize to 224, uint8 (now) (ms)": round(new, 1),
            "float copy of the crop avoided (MiB)": round(frames.numel() * 4 / 2**20),
            "clips/s per worker, before": round(1000 / (decode + old), 2),
            "clips/s per worker, now": round(1000 / (decode + new), 2),
            "uint8 vs float: max / mean |diff| (grey levels)": [int(diff.max()), round(float(diff.float().mean()), 3)],
            "torch": torch.__version__, "pyav": av.__version__}
    if args.json:
        print(json.dumps(rows))
    else:
        for key, value in rows.items():
            print(f"{key:52s} {value}")


if __name__ == "__main__":
    main()
