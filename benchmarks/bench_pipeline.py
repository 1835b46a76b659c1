"""The whole training loader per core (decode, random resized crop to 224, collate), in clips/s, on 720p
H.264 "as downloaded" against the same files after `cast-video data prepare` (320 short side, GOP 16).

    .venv/bin/python benchmarks/bench_pipeline.py [--videos 4] [--seconds 10] [--clips 12] [--rounds 2] [--json]
    .venv/bin/python benchmarks/bench_pipeline.py --gop-sweep 16,8,4,2 [--videos 4] ...

Videos: `--videos` synthetic 1280x720 30 fps H.264 files of `--seconds` s (x264 veryfast, CRF 23, a
keyframe every 250 frames as YouTube-style downloads have; content: a smooth random texture drifting
4 px per frame, a moving sinusoid and mild per-frame noise, so the bitrate is that of real footage,
printed), prepared once with `data.prepare` (timed: encode speed per core), with its defaults (320 short side,
GOP 16, CRF 23, preset fast, tune fastdecode), once more with `--gop 8` and once as JPEG frames
(`--frames jpg`). Two rows seek at every keyframe passed (`min_seek_skip=1`) against the default 4.
Each variant is the real
`VideoDataset` + `DataLoader(num_workers=0, batch_size=4, collate)` with torch on one thread and one
decoder thread, i.e. one core. The per-core figure is clips per CPU second of the process
(`time.process_time`), which a shared, oversubscribed machine inflates far less than wall time; clips
per wall second are printed beside it. One row uses 2 decoder threads, to see whether FFmpeg's
threading pays per core. The variants run interleaved, A B A B ..., for `--rounds` rounds; the table
gives each round and the mean.

`--gop-sweep` measures only prepared video, at each GOP given (the same files prepared once per GOP),
with each one's bitrate: what a shorter GOP buys segment clips, and what it costs on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from cast_video.data import DataConfig, collate, video_info
from cast_video.data.dataset import VideoDataset
from cast_video.data.prepare import PrepareOptions, prepare_video


def synthetic_720p(path: Path, seconds: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    frames, h, w = round(30 * seconds), 720, 1280
    coarse = torch.from_numpy(rng.integers(0, 256, (3, h // 16, (w + 4 * frames) // 16), dtype=np.uint8))
    texture = torch.nn.functional.interpolate(coarse[None].float(), scale_factor=16, mode="bilinear")[0]
    texture = texture.permute(1, 2, 0).to(torch.uint8).numpy()  # (h, w + 4 * frames, 3) smooth blobs
    x = np.arange(w)[None, :, None]
    y = np.arange(h)[:, None, None]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": "250", "crf": "23", "preset": "veryfast"}
        for i in range(frames):
            img = texture[:, 4 * i: 4 * i + w].astype(np.int16)
            img = img + (40 * np.sin((x + 6 * i) / 37.0 + y / 53.0)).astype(np.int16)
            img = img + rng.integers(-3, 4, (h, w, 1), dtype=np.int16)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def loader_rate(listing: Path, sampling: str, clips: int, plan_seeks: bool = True, min_seek_skip: int | None = None,
                **data) -> tuple[float, float]:
    """(clips per wall second, clips per CPU second of this process) of the whole loader."""
    cfg = DataConfig(train=str(listing), sampling=sampling, num_frames=16, input_size=224,
                     **{"decode_threads": 1, **data})
    dataset = VideoDataset(cfg, "train")
    dataset.video_backend.plan_seeks = plan_seeks
    if min_seek_skip is not None:
        dataset.video_backend.min_seek_skip = min_seek_skip
    sampler = RandomSampler(dataset, replacement=True, num_samples=clips, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=0, collate_fn=collate)
    for path in {s.path for s in dataset.samples}:  # frame counts cached, as a worker caches them once
        dataset._span(next(s for s in dataset.samples if s.path == path))
    start, cpu = time.perf_counter(), time.process_time()
    seen = sum(len(batch["video"]) for batch in loader)
    return seen / (time.perf_counter() - start), seen / (time.process_time() - cpu)


def gop_sweep(videos: list[Path], gops: list[int], folder: Path, clips: int, rounds: int) -> dict:
    """Clips per CPU second of the loader on the videos prepared at each GOP, and each GOP's Mbit/s."""
    seconds = sum(video_info(v).num_frames for v in videos) / 30
    lists, mbit = {}, {}
    for gop in gops:
        prepared = folder / f"gop{gop}"
        options = PrepareOptions(short_side=320, gop=gop, threads=1)
        for v in videos:
            assert prepare_video(v, prepared / v.name, options).status == "done"
        mbit[gop] = round(8 * sum(f.stat().st_size for f in prepared.iterdir()) / seconds / 1e6, 2)
        lists[gop] = folder / f"gop{gop}.txt"
        lists[gop].write_text("".join(f"{prepared / v.name} 0\n" for v in videos))
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for sampling in ("segment", "dense"):
            for gop in gops:
                rates.setdefault((sampling, gop), []).append(loader_rate(lists[gop], sampling, clips)[1])
    return {"load average": os.getloadavg()[0],
            "rows": [{"gop": g, "mbit_s": mbit[g], "sampling": s, "clips_per_cpu_s": round(float(np.mean(r)), 2),
                      "rounds_cpu": [round(c, 2) for c in r]} for (s, g), r in rates.items()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clips", type=int, default=12, help="clips per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--gop-sweep", metavar="GOPS", help="comma-separated GOPs: prepared video only, per GOP")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.gop_sweep:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw"
            raw.mkdir()
            videos = [synthetic_720p(raw / f"v{i}.mp4", args.seconds, i) for i in range(args.videos)]
            gops = [int(g) for g in args.gop_sweep.split(",")]
            print(json.dumps(gop_sweep(videos, gops, Path(tmp), args.clips, args.rounds)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        raw, prepared, gop8, jpg = (Path(tmp) / name for name in ("raw", "prepared", "gop8", "jpg"))
        raw.mkdir()
        videos = [synthetic_720p(raw / f"v{i}.mp4", args.seconds, i) for i in range(args.videos)]
        tic = time.process_time()
        for v in videos:
            result = prepare_video(v, prepared / v.name, PrepareOptions(short_side=320, gop=16, threads=1))
            assert result.status == "done", result.reason
        prepare_s = time.process_time() - tic
        for v in videos:
            assert prepare_video(v, gop8 / v.name, PrepareOptions(short_side=320, gop=8, threads=1)).status == "done"
            jpeg = PrepareOptions(short_side=320, frames="jpg", threads=1)
            assert prepare_video(v, jpg / v.stem, jpeg).status == "done"
        frames = sum(video_info(v).num_frames for v in videos)
        seconds = frames / 30

        def mbit_s(folder: Path) -> float:
            return round(8 * sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / seconds / 1e6, 2)

        info = {"720p Mbit/s": mbit_s(raw), "320p Mbit/s": mbit_s(prepared), "320p GOP 8 Mbit/s": mbit_s(gop8),
                "320p JPEG frames Mbit/s": mbit_s(jpg),
                "prepare: frames per CPU s (720p decode, scale, 320p encode)": round(frames / prepare_s, 1),
                "torch": torch.__version__, "pyav": av.__version__, "load average": os.getloadavg()[0]}
        lists = {}
        for name, folder in (("raw", raw), ("prepared", prepared), ("gop8", gop8), ("jpg", jpg)):
            lists[name] = Path(tmp) / f"{name}.txt"
            lists[name].write_text("".join(f"{folder / (v.stem if name == 'jpg' else v.name)} 0\n" for v in videos))
        variants = [("720p H.264 GOP 250 (as downloaded)", "raw", {}),
                    ("720p, scaled on decode to 320", "raw", {"decode_short_side": 320}),
                    ("720p, 2 decoder threads (2 cores, frame+slice threads)", "raw", {"decode_threads": 2}),
                    ("prepared 320p GOP 16", "prepared", {}),
                    ("prepared 320p GOP 16, seeks by gap only", "prepared", {"plan_seeks": False}),
                    ("prepared 320p GOP 16, a seek at every keyframe passed (min_seek_skip=1)", "prepared",
                     {"min_seek_skip": 1}),
                    ("prepared 320p GOP 8 (--gop 8)", "gop8", {}),
                    ("prepared 320p GOP 8, min_seek_skip=1", "gop8", {"min_seek_skip": 1}),
                    ("prepared 320p JPEG frames (--frames jpg)", "jpg", {})]
        rates: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for sampling in ("segment", "dense"):
                for label, which, data in variants:
                    rate = loader_rate(lists[which], sampling, args.clips, **data)
                    rates.setdefault((sampling, label), []).append(rate)
    rows = [{"what": f"loader, {s} 16 frames at 224: {label}",
             "clips_per_cpu_s": round(float(np.mean([c for _, c in r])), 2),
             "clips_per_s": round(float(np.mean([w for w, _ in r])), 2),
             "rounds_cpu": [round(c, 2) for _, c in r]} for (s, label), r in rates.items()]
    if args.json:
        print(json.dumps({"info": info, "rows": rows}))
        return
    for key, value in info.items():
        print(f"{key}: {value}")
    print(f"\n| {'loader, batch 4':<78} | clips per CPU s | rounds | clips per wall s |\n"
          f"|{'-' * 80}|----------------:|--------|-----------------:|")
    for row in rows:
        print(f"| {row['what']:<78} | {row['clips_per_cpu_s']:15.2f} | {' '.join(map(str, row['rounds_cpu']))} "
              f"| {row['clips_per_s']:16.2f} |")


if __name__ == "__main__":
    main()
