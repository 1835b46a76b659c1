"""`cast-video data check CONFIG_OR_DIR`: decode every sample once, in parallel, before training.
`cast-video data prepare SRC DST`: re-encode a dataset to a 320 short side with short GOPs (`data.prepare`)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections import Counter
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from ..data import VideoReadError, build_dataset


def register(sub) -> None:
    p = sub.add_parser("data", help="check a dataset before training (counts per class, unreadable files); prepare "
                       "(re-encode) it for fast loading")
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser("check", help="decode every sample once; print counts per class and the bad files",
                           description="Decode every sample once. Given a data folder (as for `train --data`), "
                           "every split is checked, with the validation split `train --data` would hold out; "
                           "given a training config, its --split. Exit status 1 if any file is unreadable.")
    c.add_argument("config", metavar="CONFIG_OR_DIR", help="a training config (its data section is checked) or a "
                   "folder of class folders / train/ val/ folders")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    c.add_argument("--split", default="train", choices=["train", "val", "test"], help="the split of a config")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=run)
    _register_prepare(actions)


def _register_prepare(actions) -> None:
    p = actions.add_parser(
        "prepare", help="re-encode a dataset's videos to a small short side with short GOPs (or JPEG frames)",
        description="Re-encode every video under SRC into DST, mirroring SRC's folders: H.264 (libx264, CRF "
        "--crf, --tune fastdecode, yuv420p), short side --short-side (never upscaled), a keyframe every "
        "--gop frames so that each clip's seek is cheap, the frame rate kept, audio dropped. "
        "With --frames jpg, each video "
        "becomes a folder of frame_0000000001.jpg ... instead. Other files (annotations) are copied; in "
        "text annotation files the absolute SRC path and renamed video suffixes (.webm -> .mp4) are "
        "rewritten to point into DST. Resumable: finished files are skipped, and a killed run leaves only "
        "hidden .tmp files. Unreadable videos are listed at the end (exit status 1); the rest is done.")
    p.add_argument("src", metavar="SRC", help="the dataset folder (videos, in any tree of folders)")
    p.add_argument("dst", metavar="DST", help="the output folder (created; must not be inside SRC)")
    p.add_argument("--short-side", type=int, default=320, help="short side in pixels (default 320, VideoMAE's)")
    p.add_argument("--gop", type=int, default=16,
                   help="frames between keyframes (default 16, for dense clips; 2 loads segment clips about "
                        "2x faster for 3.5x the disk, docs/DATA.md)")
    p.add_argument("--crf", type=int, default=23, help="x264 quality, lower is better (default 23, x264's)")
    p.add_argument("--preset", default="fast", help="x264 preset (default fast)")
    p.add_argument("--tune", default="fastdecode", help="x264 tune (default fastdecode: about 2x faster to "
                   "decode for 1.3x the size); '' for none")
    p.add_argument("--frames", choices=["jpg"], default="",
                   help="extract JPEG frames instead of re-encoding (the fastest to load, about 10x the disk; "
                   "for segment-sampled data such as SSV2 and EK100, docs/DATA.md)")
    p.add_argument("--jpeg-quality", type=int, default=2, help="JPEG quality, FFmpeg's -q:v: 2 (best) .. 31")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_prepare)


def run_prepare(args) -> int:
    from tqdm import tqdm

    from ..data.prepare import PrepareOptions, plan, prepare_dataset

    opts = PrepareOptions(short_side=args.short_side, gop=args.gop, crf=args.crf, preset=args.preset,
                          tune=args.tune, frames=args.frames, jpeg_quality=args.jpeg_quality)
    videos, others = plan(Path(args.src), Path(args.dst), opts)
    counts: Counter = Counter()
    failed = []
    with tqdm(total=len(videos) + len(others), desc="prepare", unit="file", disable=args.no_progress) as bar:
        for result in prepare_dataset(args.src, args.dst, opts, workers=args.workers):
            counts[result.status] += 1
            if result.status == "failed":
                failed.append(result.reason)
            bar.update()
    print(f"{args.dst}: {counts['done']} videos prepared, {counts['skipped']} already there, "
          f"{counts['copied']} other files copied, {len(failed)} unreadable")
    for reason in failed:
        print(f"failed: {reason}")
    return 1 if failed else 0


class _Probe(Dataset):
    """Each sample decoded in strict mode: (index, "" or the reason it cannot be read)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, str]:
        try:
            self.dataset[i]
            return i, ""
        except VideoReadError as err:
            return i, str(err)


def _first(batch: list) -> tuple[int, str]:
    return batch[0]


def check_split(cfg, split: str, workers: int, progress: bool) -> int:
    """Print the counts and the unreadable samples of one split; returns how many are unreadable."""
    from tqdm import tqdm

    data = dataclasses.replace(cfg.data, on_bad_video="raise")
    dataset = build_dataset(data, split, seed=cfg.seed)
    loader = DataLoader(_Probe(dataset), batch_size=1, num_workers=workers, collate_fn=_first)
    bad = {}
    for index, reason in tqdm(loader, total=len(dataset), desc=f"check {split}", disable=not progress):
        if reason:
            bad[index] = reason
    counts: dict[str, Counter] = {}
    for sample in dataset.samples:
        for task, label in sample.labels.items():
            counts.setdefault(task, Counter())[label] += 1
    print(f"{len(dataset)} samples in {split}, {len(bad)} unreadable")
    for task, counter in counts.items():
        names = dataset.class_names.get(task, [])
        print(f"{task}: {len(counter)} classes")
        for label, n in sorted(counter.items()):
            print(f"  {label:>5} {names[label] if label < len(names) else '':<30} {n:>7}")
    for index in sorted(bad):
        print(f"bad: sample {index}: {bad[index]}")
    return len(bad)


def run(args) -> int:
    from ..engine.autoconfig import load_train_config, own_data_config, write_plan

    progress = not args.no_progress
    if Path(args.config).is_dir() or not args.config.endswith((".yaml", ".yml")):
        from ..data.folders import scan_data

        with tempfile.TemporaryDirectory() as tmp:  # the split CSVs, as train --data would write them
            plan = own_data_config(scan_data(args.config), overrides=[*args.overrides, f"output_dir={tmp}"])
            cfg = write_plan(plan)
            bad = sum(check_split(cfg, split, args.workers, progress) for split in plan.splits)
    else:
        bad = check_split(load_train_config(args.config, args.overrides), args.split, args.workers, progress)
    return 1 if bad else 0
