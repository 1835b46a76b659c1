"""Annotation formats of Kinetics-400, Something-Something-V2, EPIC-KITCHENS-100 and users' own data.

Every parser returns a list of `Sample`s: where the frames are, which frames belong to the action
(a segment of a long video for EPIC), and the labels as {task: class}. A malformed line raises an
error naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file and line."""


@dataclass
class Sample:
    path: str
    labels: dict[str, int]
    id: str
    start_frame: int = 0  # first frame of the action, 0-based
    stop_frame: int | None = None  # last frame, inclusive; None = the end of the video
    meta: dict = field(default_factory=dict)


def _int(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {what} must be an integer, got {value!r}") from None


def read_path_label_list(file: str | os.PathLike, root: str = "", task: str = "action") -> list[Sample]:
    """VideoMAE / CAST lists: `path label` (space-separated) or `path,label` per line."""
    samples = []
    for n, line in enumerate(Path(file).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().replace(",", " ").split()
        if len(parts) < 2:
            raise AnnotationError(f"{file}:{n}: expected 'path label', got {line!r}")
        path, label = " ".join(parts[:-1]), _int(parts[-1], f"{file}:{n}", "label")
        samples.append(Sample(os.path.join(root, path), {task: label}, id=path))
    return samples


def read_kinetics_csv(file: str | os.PathLike, root: str, classes: list[str] | None = None,
                      task: str = "action") -> tuple[list[Sample], list[str]]:
    """The official K400 CSV (`label,youtube_id,time_start,time_end,split`); files are named
    `{youtube_id}_{start:06d}_{end:06d}.mp4` (the usual download layout), directly under `root` or in
    a folder per class. Class ids are the sorted class names unless `classes` is given."""
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "youtube_id", "time_start", "time_end"}
    if rows and not need <= set(rows[0]):
        raise AnnotationError(f"{file}: columns {sorted(need)} expected, found {list(rows[0])}")
    classes = classes or sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for n, r in enumerate(rows, 2):
        if r["label"] not in index:
            raise AnnotationError(f"{file}:{n}: unknown class {r['label']!r}")
        name = f"{r['youtube_id']}_{_int(r['time_start'], f'{file}:{n}', 'time_start'):06d}_" \
               f"{_int(r['time_end'], f'{file}:{n}', 'time_end'):06d}.mp4"
        flat, nested = os.path.join(root, name), os.path.join(root, r["label"], name)
        path = nested if not os.path.exists(flat) and os.path.exists(nested) else flat
        samples.append(Sample(path, {task: index[r["label"]]}, id=name.removesuffix(".mp4")))
    return samples, classes


def read_ssv2_json(file: str | os.PathLike, labels_json: str | os.PathLike, root: str,
                   task: str = "action", ext: str = ".webm") -> tuple[list[Sample], list[str]]:
    """The official SSV2 JSON (`[{"id", "label", "template", "placeholders"}]`) with `labels.json`
    (template -> id). The template's `[something]` brackets are removed to find the class."""
    mapping = json.loads(Path(labels_json).read_text())
    classes = [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
    samples = []
    for n, item in enumerate(json.loads(Path(file).read_text())):
        if "id" not in item or "template" not in item:
            raise AnnotationError(f"{file}: entry {n} lacks 'id' or 'template': {item}")
        template = item["template"].replace("[", "").replace("]", "")
        if template not in mapping:
            raise AnnotationError(f"{file}: entry {n} ({item['id']}): template {template!r} is not in {labels_json}")
        samples.append(Sample(os.path.join(root, f"{item['id']}{ext}"), {task: int(mapping[template])}, id=item["id"]))
    return samples, classes


def read_epic_csv(file: str | os.PathLike, root: str, layout: str = "video",
                  video_template: str = "{participant_id}/videos/{video_id}.MP4",
                  frames_template: str = "{participant_id}/rgb_frames/{video_id}") -> list[Sample]:
    """EPIC-KITCHENS-100 `EPIC_100_train.csv` / `EPIC_100_validation.csv`: segments of long videos.

    `start_frame` / `stop_frame` are 1-based and inclusive in the CSV (as are EPIC's extracted
    `frame_0000000001.jpg` files); samples hold them 0-based. `layout="frames"` reads frame folders.
    """
    samples = []
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        need = {"narration_id", "participant_id", "video_id", "start_frame", "stop_frame"}
        if not need <= set(reader.fieldnames or []):
            raise AnnotationError(f"{file}: columns {sorted(need)} expected, found {reader.fieldnames}")
        for n, r in enumerate(reader, 2):
            where = f"{file}:{n}"
            start, stop = _int(r["start_frame"], where, "start_frame"), _int(r["stop_frame"], where, "stop_frame")
            if stop < start or start < 1:
                raise AnnotationError(f"{where}: bad segment start_frame={start} stop_frame={stop}")
            labels = {}
            for task in ("verb", "noun"):  # the test set has no labels
                if r.get(f"{task}_class", "") != "":
                    labels[task] = _int(r[f"{task}_class"], where, f"{task}_class")
            template = frames_template if layout == "frames" else video_template
            path = os.path.join(root, template.format(**r))
            samples.append(Sample(path, labels, id=r["narration_id"], start_frame=start - 1, stop_frame=stop - 1,
                                  meta={"video_id": r["video_id"]}))
    return samples


def read_cast_epic_list(file: str | os.PathLike, root: str, ext: str = ".mp4") -> list[Sample]:
    """CAST's pre-cut EK100 lists: `clip_id,verb,noun` per line, one trimmed video per action."""
    samples = []
    for n, line in enumerate(Path(file).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            raise AnnotationError(f"{file}:{n}: expected 'video_id,verb,noun', got {line!r}")
        where = f"{file}:{n}"
        name = parts[0] if parts[0].endswith(ext) else parts[0] + ext
        samples.append(Sample(os.path.join(root, name), {"verb": _int(parts[1], where, "verb"),
                                                         "noun": _int(parts[2], where, "noun")}, id=parts[0]))
    return samples


def read_generic(source: str | os.PathLike, root: str = "", task: str = "action",
                 fps: float = 30.0) -> tuple[list[Sample], list[str]]:
    """Users' own data: a folder with one sub-folder per class, or a CSV `path,label[,start,end]`
    (label a class name or id; start/end in seconds)."""
    source = Path(source)
    if source.is_dir():
        classes = sorted(d.name for d in source.iterdir() if d.is_dir())
        samples = [Sample(str(f), {task: i}, id=f"{c}/{f.name}") for i, c in enumerate(classes)
                   for f in sorted((source / c).iterdir()) if f.is_file()]
        return samples, classes
    with open(source, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and rows[0][0] == "path":
        rows = rows[1:]
    names = sorted({r[1] for r in rows if len(r) > 1 and not r[1].lstrip("-").isdigit()})
    index = {c: i for i, c in enumerate(names)}
    samples = []
    for n, r in enumerate(rows, 1):
        if len(r) not in (2, 4):
            raise AnnotationError(f"{source}:{n}: expected 'path,label[,start,end]', got {r}")
        label = index[r[1]] if r[1] in index else _int(r[1], f"{source}:{n}", "label")
        start = round(float(r[2]) * fps) if len(r) == 4 else 0
        stop = round(float(r[3]) * fps) - 1 if len(r) == 4 else None
        samples.append(Sample(os.path.join(root, r[0]), {task: label}, id=r[0], start_frame=start, stop_frame=stop))
    return samples, names


def read_epic_classes(file: str | os.PathLike) -> list[str]:
    """`EPIC_100_verb_classes.csv` / `EPIC_100_noun_classes.csv` (`id,key,...`) -> names by id."""
    with open(file, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"id", "key"} <= set(rows[0]):
        raise AnnotationError(f"{file}: columns id,key expected, found {list(rows[0])}")
    names = {int(r["id"]): r["key"] for r in rows}
    return [names[i] for i in range(len(names))]


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


def read_unlabeled(folder: str | os.PathLike) -> list[Sample]:
    """Every video under a folder, without labels: the input of self-supervised pre-training."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: not a folder of videos")
    return [Sample(str(f), {}, id=str(f.relative_to(folder))) for f in sorted(folder.rglob("*"))
            if f.suffix.lower() in VIDEO_SUFFIXES]
