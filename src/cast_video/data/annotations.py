"""Annotation formats of Kinetics-400, Something-Something-V2, EPIC-KITCHENS-100 and users' own data.

Every parser returns a list of `Sample`s: where the frames are, which frames belong to the action
(a segment of a long video for EPIC), and the labels as {task: class}. A malformed line raises an
`AnnotationError` naming the file, the line and the field, before any training starts: finding a bad
row in hour 20 of a run is what this avoids.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import AnnotationError  # noqa: F401  (re-exported)


@dataclass
class Sample:
    path: str
    labels: dict[str, int]
    id: str
    start_frame: int = 0  # first frame of the action, 0-based
    stop_frame: int | None = None  # last frame, inclusive; None = the end of the video
    start_sec: float | None = None  # a segment given in seconds, turned into frames with the video's fps
    stop_sec: float | None = None
    where: str = ""  # "file:line" of the annotation, for error messages
    meta: dict = field(default_factory=dict)


def _int(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {what} must be an integer, got {value!r}") from None


def _float(value: str, where: str, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {what} must be a number, got {value!r}") from None


def _seconds(stamp: str, where: str, what: str) -> float:
    """EPIC's 'HH:MM:SS.ff' (or plain seconds) -> seconds."""
    parts = stamp.split(":")
    try:
        return sum(float(p) * 60 ** k for k, p in enumerate(reversed(parts)))
    except ValueError:
        raise AnnotationError(f"{where}: {what} must be HH:MM:SS.ff, got {stamp!r}") from None


def _dict_rows(file, need: set[str]):
    """(line number, row) of a CSV with a header, after checking that the header has `need`."""
    f = open(file, newline="")
    reader = csv.DictReader(f)
    missing = need - set(reader.fieldnames or [])
    if missing:
        f.close()
        raise AnnotationError(f"{file}:1: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
    with f:
        for row in reader:
            yield reader.line_num, row


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
        samples.append(Sample(os.path.join(root, path), {task: label}, id=path, where=f"{file}:{n}"))
    return samples


def read_kinetics_csv(file: str | os.PathLike, root: str, classes: list[str] | None = None,
                      task: str = "action") -> tuple[list[Sample], list[str]]:
    """The official K400 CSV (`label,youtube_id,time_start,time_end,split`); files are named
    `{youtube_id}_{start:06d}_{end:06d}.mp4` (the usual download layout), directly under `root` or in
    a folder per class. Class ids are the sorted class names (the convention of every K400 list)
    unless `classes` is given. The clips are already trimmed, so a sample is the whole file."""
    rows = list(_dict_rows(file, {"label", "youtube_id", "time_start", "time_end"}))
    classes = classes or sorted({r["label"] for _, r in rows})
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for n, r in rows:
        where = f"{file}:{n}"
        if r["label"] not in index:
            raise AnnotationError(f"{where}: label: unknown class {r['label']!r}")
        start, end = _int(r["time_start"], where, "time_start"), _int(r["time_end"], where, "time_end")
        if start < 0 or end <= start:
            raise AnnotationError(f"{where}: time_start={start}, time_end={end}: not a segment")
        name = f"{r['youtube_id']}_{start:06d}_{end:06d}.mp4"
        flat, nested = os.path.join(root, name), os.path.join(root, r["label"], name)
        path = nested if not os.path.exists(flat) and os.path.exists(nested) else flat
        samples.append(Sample(path, {task: index[r["label"]]}, id=name.removesuffix(".mp4"), where=where))
    return samples, classes


def read_ssv2_labels(labels_json: str | os.PathLike) -> list[str]:
    """SSV2's `labels.json` (template name -> id) -> names by id."""
    mapping = json.loads(Path(labels_json).read_text())
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]


def read_ssv2_json(file: str | os.PathLike, labels_json: str | os.PathLike, root: str,
                   task: str = "action", ext: str = ".webm") -> tuple[list[Sample], list[str]]:
    """The official SSV2 JSON (`[{"id", "label", "template", "placeholders"}]`) with `labels.json`
    (template -> id). The template's `[something]` brackets are removed to find the class; the test
    split has no template and gives unlabelled samples. JSON has no useful line numbers, so errors
    name the entry."""
    classes = read_ssv2_labels(labels_json)
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for n, item in enumerate(json.loads(Path(file).read_text())):
        where = f"{file}: entry {n}"
        if "id" not in item:
            raise AnnotationError(f"{where}: no 'id' field: {item}")
        labels = {}
        if "template" in item:
            template = item["template"].replace("[", "").replace("]", "")
            if template not in index:
                raise AnnotationError(f"{where} (id {item['id']}): template: {template!r} is not in {labels_json}")
            labels[task] = index[template]
        samples.append(Sample(os.path.join(root, f"{item['id']}{ext}"), labels, id=str(item["id"]), where=where))
    return samples, classes


def read_epic_csv(file: str | os.PathLike, root: str, layout: str = "video",
                  video_template: str = "{participant_id}/videos/{video_id}.MP4",
                  frames_template: str = "{participant_id}/rgb_frames/{video_id}",
                  use_timestamps: bool = False) -> list[Sample]:
    """EPIC-KITCHENS-100 `EPIC_100_train.csv` / `EPIC_100_validation.csv`: segments of long videos.

    `start_frame` / `stop_frame` are 1-based and inclusive in the CSV (as are EPIC's extracted
    `frame_0000000001.jpg` files); samples hold them 0-based. `use_timestamps` takes
    `start_timestamp` / `stop_timestamp` instead, turned into frames with each video's own fps (for
    videos re-encoded at another frame rate). `layout="frames"` reads frame folders.
    """
    need = {"narration_id", "participant_id", "video_id"}
    need |= {"start_timestamp", "stop_timestamp"} if use_timestamps else {"start_frame", "stop_frame"}
    template = frames_template if layout == "frames" else video_template
    samples = []
    for n, r in _dict_rows(file, need):
        where = f"{file}:{n}"
        labels = {}
        for task in ("verb", "noun"):  # the test set has no labels
            if r.get(f"{task}_class") not in (None, ""):
                labels[task] = _int(r[f"{task}_class"], where, f"{task}_class")
        path = os.path.join(root, template.format(**r))
        meta = {"video_id": r["video_id"], "participant_id": r["participant_id"]}
        if use_timestamps:
            start = _seconds(r["start_timestamp"], where, "start_timestamp")
            stop = _seconds(r["stop_timestamp"], where, "stop_timestamp")
            if stop <= start:
                raise AnnotationError(f"{where}: start_timestamp={r['start_timestamp']} stop_timestamp="
                                      f"{r['stop_timestamp']}: reversed or empty segment")
            samples.append(Sample(path, labels, id=r["narration_id"], start_sec=start, stop_sec=stop, where=where,
                                  meta=meta))
            continue
        start, stop = _int(r["start_frame"], where, "start_frame"), _int(r["stop_frame"], where, "stop_frame")
        if start < 1:
            raise AnnotationError(f"{where}: start_frame={start}: frames are numbered from 1")
        if stop < start:
            raise AnnotationError(f"{where}: start_frame={start} stop_frame={stop}: reversed segment")
        samples.append(Sample(path, labels, id=r["narration_id"], start_frame=start - 1, stop_frame=stop - 1,
                              where=where, meta=meta))
    return samples


def read_cast_epic_list(file: str | os.PathLike, root: str, ext: str = ".mp4") -> list[Sample]:
    """CAST's pre-cut EK100 lists (`annotations/ek100/*.csv` of the official code): `narration_id,verb,noun`
    per line, no header, one trimmed video `{root}/{narration_id}.mp4` per action."""
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
                                                         "noun": _int(parts[2], where, "noun")}, id=parts[0],
                              where=where))
    return samples


def read_generic(source: str | os.PathLike, root: str = "", task: str = "action") -> tuple[list[Sample], list[str]]:
    """Users' own data: a folder with one sub-folder per class (a video file or a frame folder per
    sample), or a CSV `path,label[,start,end]` with an optional header; the label is a class name
    (ids then follow sorted names) or an integer id; start/end are in seconds."""
    source = Path(source)
    if source.is_dir():
        classes = sorted(d.name for d in source.iterdir() if d.is_dir())
        samples = [Sample(str(f), {task: i}, id=f"{c}/{f.name}", where=str(f)) for i, c in enumerate(classes)
                   for f in sorted((source / c).iterdir()) if not f.name.startswith(".")]
        return samples, classes
    with open(source, newline="") as f:
        rows = [(n, r) for n, r in enumerate(csv.reader(f), 1) if r]
    if rows and rows[0][1][0].strip().lower() == "path":
        rows = rows[1:]
    names = sorted({r[1] for _, r in rows if len(r) > 1 and not r[1].strip().lstrip("-").isdigit()})
    index = {c: i for i, c in enumerate(names)}
    samples = []
    for n, r in rows:
        where = f"{source}:{n}"
        if len(r) not in (2, 4):
            raise AnnotationError(f"{where}: expected 'path,label[,start,end]', got {r}")
        if names and r[1] not in index:
            raise AnnotationError(f"{where}: label: mixes class names and ids ({r[1]!r})")
        label = index[r[1]] if r[1] in index else _int(r[1], where, "label")
        start = stop = None
        if len(r) == 4:
            start, stop = _float(r[2], where, "start"), _float(r[3], where, "end")
            if start < 0 or stop <= start:
                raise AnnotationError(f"{where}: start={start}, end={stop}: negative or reversed segment")
        samples.append(Sample(os.path.join(root, r[0]), {task: label}, id=r[0], start_sec=start, stop_sec=stop,
                              where=where))
    return samples, names


def read_epic_classes(file: str | os.PathLike) -> list[str]:
    """`EPIC_100_verb_classes.csv` / `EPIC_100_noun_classes.csv` (`id,key,instances,category`) -> names by id."""
    names = {}
    for n, r in _dict_rows(file, {"id", "key"}):
        names[_int(r["id"], f"{file}:{n}", "id")] = r["key"]
    if sorted(names) != list(range(len(names))):
        raise AnnotationError(f"{file}: class ids are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


def validate(samples: list[Sample], class_names: dict[str, list[str]], check_files: bool = False) -> None:
    """Labels inside the known classes, and (with `check_files`) every video present; the error names
    the annotation line."""
    for s in samples:
        for task, y in s.labels.items():
            names = class_names.get(task)
            if y < 0 or (names is not None and y >= len(names)):
                bound = f" (0..{len(names) - 1})" if names is not None else ""
                raise AnnotationError(f"{s.where}: {task} label {y} is out of range{bound}")
        if check_files and not os.path.exists(s.path):
            raise AnnotationError(f"{s.where}: file {s.path} does not exist")


VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def is_frame_folder(path: Path) -> bool:
    """A folder holding image files directly: one clip's frames (as `data prepare --frames jpg` writes)."""
    return path.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.iterdir())


def clips_under(folder: Path) -> list[Path]:
    """Every video file and frame folder under `folder` (recursively), sorted; `folder` itself when it is
    a frame folder. One listing per folder: a frame folder's images are not looked at one by one, and
    nothing below a frame folder is searched."""
    found = []
    for root, dirs, files in os.walk(folder):
        if any(os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES for f in files):
            found.append(Path(root))
            dirs.clear()
            continue
        found += [Path(root) / f for f in files if os.path.splitext(f)[1].lower() in VIDEO_SUFFIXES]
    return sorted(found)


def read_unlabeled(folder: str | os.PathLike) -> list[Sample]:
    """Every video and frame folder under a folder, without labels: the input of self-supervised
    pre-training."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: not a folder of videos")
    return [Sample(str(f), {}, id=str(f.relative_to(folder)) if f != folder else f.name) for f in clips_under(folder)]
