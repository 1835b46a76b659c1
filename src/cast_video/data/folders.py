"""Users' own videos, as they lie on disk: find the classes and splits, hold out a validation split.

`scan_data(DIR)` accepts the three layouts a user is likely to have: one folder per class (videos or
frame folders), `train/` and `val/` (and `test/`) folders each holding the class folders, or one
annotation file of a supported format. Classes are the sorted folder names (or the file's names), so
the same folder always gives the same class ids. Without a `val/` folder, `holdout` draws a stratified,
seeded validation split (at least one clip per class), and `write_splits` writes every split as a CSV
(`path,label` with integer ids, plus `classes.txt`) that the `generic` format reads back: the split is
a file in the run folder, not a draw that must be repeated.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, VideoReadError
from ..files import atomic_write_text
from .annotations import VIDEO_SUFFIXES, Sample, is_frame_folder, read_generic, read_kinetics_csv, read_path_label_list
from .video import video_info

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class FolderData:
    """The samples of each split found on disk (labels under `task`) and the class names by id."""

    source: Path
    layout: str  # "class folders", "split folders" or "annotation file"
    classes: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # files in class folders that are neither video nor frames


def _class_samples(folder: Path, label: int, task: str, skipped: list[str]) -> list[Sample]:
    samples = []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        if f.suffix.lower() in VIDEO_SUFFIXES or is_frame_folder(f):
            samples.append(Sample(str(f.resolve()), {task: label}, id=f"{folder.name}/{f.name}", where=str(f)))
        else:
            skipped.append(str(f))
    return samples


def _check_readable(folder: Path, samples: list[Sample]) -> None:
    """At least one sample of a class opens: a folder of broken files is an error now, not a run that
    replaces every clip of the class by another class's clips."""
    if not samples:
        raise DataError(f"{folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) or frame folders in this class "
                        "folder")
    first = ""
    for s in samples:
        try:
            video_info(s.path)
            return
        except (VideoReadError, OSError, ValueError) as err:
            first = first or str(err)
    raise DataError(f"{folder}: none of its {len(samples)} videos can be read (first: {first})")


def _class_folders(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _scan_classes(root: Path, classes: list[str], task: str, skipped: list[str]) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for folder in _class_folders(root):
        if folder.name not in index:
            raise DataError(f"{folder}: class {folder.name!r} is not a class folder of the training split "
                            f"({', '.join(classes)})")
        found = _class_samples(folder, index[folder.name], task, skipped)
        _check_readable(folder, found)
        samples += found
    return samples


def _read_annotation_file(file: Path, task: str) -> tuple[list[Sample], list[str]]:
    """A generic `path,label[,start,end]` CSV, a K400 CSV or a `path label` list, paths relative to the
    file's folder. The format is told by the first line."""
    head = file.read_text().split("\n", 1)[0]
    if "youtube_id" in head:
        return read_kinetics_csv(file, str(file.parent), task=task)
    if "," in head:
        samples, names = read_generic(file, str(file.parent), task=task)
    else:
        samples, names = read_path_label_list(file, str(file.parent), task=task), []
    if not names:
        names = [str(i) for i in range(1 + max((s.labels[task] for s in samples), default=-1))]
    return samples, names


def scan_data(source: str | os.PathLike, task: str = "action") -> FolderData:
    """The splits and classes of a data folder or annotation file; errors name the folder at fault."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: no such folder or file")
    skipped: list[str] = []
    if source.is_file():
        samples, classes = _read_annotation_file(source, task)
        data = FolderData(source, "annotation file", classes, {"train": samples})
    elif (source / "train").is_dir():
        classes = [d.name for d in _class_folders(source / "train")]
        splits = {s: _scan_classes(source / s, classes, task, skipped) for s in SPLIT_NAMES if (source / s).is_dir()}
        data = FolderData(source, "split folders", classes, splits)
    else:
        classes = [d.name for d in _class_folders(source)]
        data = FolderData(source, "class folders", classes, {"train": _scan_classes(source, classes, task, skipped)})
    data.skipped = skipped
    where = source / "train" if data.layout == "split folders" else source
    if not classes:
        raise DataError(f"{where}: no class folders (expected one folder per class, each holding its videos)")
    if len(classes) == 1:
        raise DataError(f"{where}: only one class ({classes[0]!r}); a classifier needs at least two class folders")
    if not data.splits["train"]:
        raise DataError(f"{source}: no samples")
    return data


def holdout(samples: list[Sample], fraction: float, seed: int, task: str = "action") -> tuple[list[Sample],
                                                                                             list[Sample]]:
    """A stratified split: round(fraction x n) clips of every class (at least one, never all) go to
    validation, drawn with `seed`. Each class is shuffled on its own, in sorted class order, so the
    split depends only on the files and the seed."""
    if not 0 < fraction < 1:
        raise DataError(f"data.val_fraction must be between 0 and 1, got {fraction}")
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.labels[task], []).append(s)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted(by_class):
        group = by_class[label]
        if len(group) < 2:
            raise DataError(f"{group[0].where}: the only clip of its class; a validation split needs at least two "
                            "clips per class (add clips, or give a val/ folder)")
        order = rng.permutation(len(group))
        n_val = min(len(group) - 1, max(1, round(fraction * len(group))))
        val += [group[i] for i in sorted(order[:n_val])]
        train += [group[i] for i in sorted(order[n_val:])]
    return train, val


def _csv(samples: list[Sample], task: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label"])
    for s in samples:
        row = [s.path, s.labels[task]]
        if s.start_sec is not None:
            row += [s.start_sec, s.stop_sec]
        writer.writerow(row)
    return out.getvalue()


def write_splits(splits: dict[str, list[Sample]], classes: list[str], directory: str | os.PathLike,
                 task: str = "action") -> dict[str, Path]:
    """`{split}.csv` (absolute paths, integer labels) and `classes.txt` in `directory`; returns the paths."""
    directory = Path(directory)
    if any("\n" in c for c in classes):
        raise DataError(f"class names must not contain line breaks: {[c for c in classes if chr(10) in c]}")
    paths = {"classes": directory / "classes.txt"}
    atomic_write_text(paths["classes"], "\n".join(classes) + "\n")
    for split, samples in splits.items():
        paths[split] = directory / f"{split}.csv"
        atomic_write_text(paths[split], _csv(samples, task))
    return paths
