"""`cast-video data check CONFIG`: decode every sample of a split once, in parallel, before training."""

from __future__ import annotations

import dataclasses
from collections import Counter

from torch.utils.data import DataLoader, Dataset

from ..config_utils import load_yaml
from ..data import VideoReadError, build_dataset
from ..engine import TrainConfig


def register(sub) -> None:
    p = sub.add_parser("data", help="inspect a dataset")
    actions = p.add_subparsers(dest="action", required=True)
    c = actions.add_parser("check", help="decode every sample once; print counts per class and the bad files")
    c.add_argument("config", help="a training config (its data section is checked)")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    c.add_argument("--split", default="train", choices=["train", "val", "test"])
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


def run(args) -> int:
    from tqdm import tqdm

    cfg = load_yaml(TrainConfig, args.config, args.overrides)
    data = dataclasses.replace(cfg.data, on_bad_video="raise")
    dataset = build_dataset(data, args.split, seed=cfg.seed)
    loader = DataLoader(_Probe(dataset), batch_size=1, num_workers=args.workers, collate_fn=_first)
    bad = {}
    for index, reason in tqdm(loader, total=len(dataset), desc=f"check {args.split}", disable=args.no_progress):
        if reason:
            bad[index] = reason
    counts: dict[str, Counter] = {}
    for sample in dataset.samples:
        for task, label in sample.labels.items():
            counts.setdefault(task, Counter())[label] += 1
    print(f"{len(dataset)} samples in {args.split}, {len(bad)} unreadable")
    for task, counter in counts.items():
        names = dataset.class_names.get(task, [])
        print(f"{task}: {len(counter)} classes")
        for label, n in sorted(counter.items()):
            print(f"  {label:>5} {names[label] if label < len(names) else '':<30} {n:>7}")
    for index in sorted(bad):
        print(f"bad: sample {index}: {bad[index]}")
    return 1 if bad else 0
