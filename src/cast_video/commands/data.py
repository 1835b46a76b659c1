"""`cast-video data check CONFIG_OR_DIR`: decode every sample once, in parallel, before training."""

from __future__ import annotations

import dataclasses
import tempfile
from collections import Counter
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from ..data import VideoReadError, build_dataset


def register(sub) -> None:
    p = sub.add_parser("data", help="check a dataset before training: counts per class, unreadable files")
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
