"""Embeddings of many videos: the pooled spatial, temporal and fused features the heads read.

`extract_features` turns inputs (videos, folders, annotation files of any format the data layer reads) into
rows: one per video (views averaged as in evaluation: `clips` segment views x `crops` crops), one per clip
(`per_clip`), or one per sliding window. Every embedding is a mean over views of `CAST.forward_embeddings`,
so each head's logits averaged over the same views are that head's linear layer applied to the row.

Work is resumable: finished videos go to `OUT.parts/` in small files as they complete; a rerun skips
every video found there or in an existing OUT, and the final file is assembled (in input order) once all
videos are done. Under torchrun, each process takes every world-th video.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data import DataConfig, build_gpu_augment, load_annotations, read_frames, video_info
from ..data.annotations import VIDEO_SUFFIXES, clips_under
from ..data.config import FORMATS
from ..data.dataset import action_span, test_crops
from ..data.sampling import segment_indices
from ..errors import AnnotationError, CastVideoError, ConfigError, DataError
from ..files import atomic_write
from ..models import CAST
from ..precision import autocast, prepare
from .distributed import DistInfo

log = logging.getLogger(__name__)
ROLES = ("spatial", "temporal", "fused")


@dataclass
class FeatureOptions:
    clips: int = 2
    crops: int = 3
    per_clip: bool = False
    window: float | None = None  # seconds; sliding windows, one centre view each
    stride: float | None = None
    batch_size: int = 8  # views per forward pass
    flush_every: int = 16  # videos per part file
    precision: str = "auto"  # as predict's: bf16 (frozen weights stored in bf16) where it is faster, else fp32


ANNOTATION_SUFFIXES = (".csv", ".txt", ".json")
ANNOTATION_FORMATS = tuple(f for f in FORMATS if f != "unlabeled")  # "unlabeled" is a folder, not a file


def detect_format(path: Path) -> str:
    """The annotation format of a file, from its suffix and header (the readers of `cast_video.data` then
    parse it): SSV2's `.json`, `path label` `.txt` lists, and CSVs by their header: EK100's (`narration_id`,
    `video_id`, ...), K400's (`label`, `youtube_id`, ...), CAST's pre-cut EK100 lists (`id,verb,noun`,
    no header), else `path,label[,start,end]`."""
    if path.suffix.lower() == ".json":
        return "ssv2_json"
    if path.suffix.lower() == ".txt":
        return "list"
    with open(path, newline="") as f:
        first = next(csv.reader(f), [])
    header = {c.strip() for c in first}
    if {"narration_id", "participant_id", "video_id"} <= header:
        return "epic_csv"
    if {"label", "youtube_id"} <= header:
        return "k400_csv"
    if len(first) == 3 and all(c.strip().isdigit() for c in first[1:]):
        return "cast_epic"
    return "generic"


def annotation_config(path: Path, data: DataConfig | None = None, fmt: str | None = None) -> DataConfig:
    """How to read one annotation file: `data` (a train config's data section, or the defaults) with this
    file as its test split, in format `fmt` (default: `detect_format`); the videos are found under
    `data.root`, else under the file's folder; SSV2's labels.json is `data.labels_json`, else the one
    beside the file."""
    data = data or DataConfig()
    fmt = fmt or detect_format(path)
    if fmt not in ANNOTATION_FORMATS:
        raise ConfigError(f"--format {fmt}: an annotation format is one of {', '.join(ANNOTATION_FORMATS)}")
    fields = {"test": str(path), "format": fmt, "root": data.root or str(path.parent)}
    if fmt == "epic_csv" and not data.use_timestamps:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        fields["use_timestamps"] = "start_frame" not in header and "start_timestamp" in header
    if fmt == "ssv2_json":
        fields["flip"] = False  # features never flip; this only keeps DataConfig's SSV2 warning quiet
        fields["labels_json"] = data.labels_json or str(path.with_name("labels.json"))
        if not Path(fields["labels_json"]).exists():
            raise ConfigError(f"{path}: an SSV2 JSON needs its labels.json ({fields['labels_json']} does not "
                              "exist): pass --labels-json")
    return dataclasses.replace(data, **fields)


Item = tuple[str, int, int | None]  # (video path, first frame, number of frames or None: to the end)


def read_annotated(path: Path, data: DataConfig | None = None, fmt: str | None = None) -> list[Item]:
    """The actions of an annotation file of any format the data layer reads, as (path, start frame, number of
    frames or None for the whole video); the spans are those training and evaluation take (`action_span`)."""
    cfg = annotation_config(path, data, fmt)
    try:
        samples, _ = load_annotations(cfg, "test")
    except CastVideoError:
        raise
    except (ValueError, KeyError, IndexError, UnicodeDecodeError) as err:  # not the format's shape at all
        raise AnnotationError(f"{path}: cannot be read as a {cfg.format} annotation file ({err})") from None
    out = []
    for s in samples:
        if s.stop_frame is None and s.start_sec is None and s.start_frame == 0:
            out.append((s.path, 0, None))
            continue
        info = None if s.stop_frame is not None else video_info(s.path)
        out.append((s.path, *action_span(s, *((info.num_frames, info.fps) if info else ()))))
    return out


def collect_inputs(inputs: list[str], data: DataConfig | None = None,
                   fmt: str | None = None) -> list[Item]:
    """Videos, frame folders, folders (searched recursively for both) and annotation files (read by
    `read_annotated` with `data` and `fmt`) -> [(path, start frame, number of frames or None)], without
    duplicates."""
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            items += [(str(p), 0, None) for p in clips_under(path)]
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            items.append((str(path), 0, None))
        elif not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        elif path.suffix.lower() in ANNOTATION_SUFFIXES:
            items += read_annotated(path, data, fmt)
        else:
            raise ConfigError(f"{path}: not a video ({', '.join(VIDEO_SUFFIXES)}), a folder or an annotation file "
                              f"({', '.join(ANNOTATION_SUFFIXES)})")
    seen, unique = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique


def _row_options(options: FeatureOptions) -> str:
    """The options that decide what a row is (not how fast it is computed), as stored in the files."""
    o = dataclasses.asdict(options)
    return json.dumps({k: o[k] for k in ("clips", "crops", "per_clip", "window", "stride", "precision")})


def item_key(item: tuple[str, int, int | None]) -> str:
    path, start, length = item
    return path if length is None and start == 0 else f"{path}[{start}:{start + (length or 0)}]"


class FeatureExtractor:
    def __init__(self, model: CAST, options: FeatureOptions, device: str = "cpu"):
        cfg = model.config
        self.model, self.opt, self.device = model.to(device).eval(), options, torch.device(device)
        self.precision, _ = prepare(self.model, options.precision, self.device)
        self.data = DataConfig(num_frames=cfg.num_frames, input_size=cfg.img_size, short_side=cfg.img_size,
                               norm=cfg.input_norm)
        self.augment = build_gpu_augment(self.data).to(device).eval()

    def _embed(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """(V, 3, 2T, S, S) uint8 -> {role: (V, D)} float32."""
        parts = []
        with torch.no_grad():
            for i in range(0, len(views), self.opt.batch_size):
                x = self.augment.normalize(views[i:i + self.opt.batch_size].to(self.device))
                with autocast(self.precision, self.device):
                    parts.append(self.model.forward_embeddings(x))
        return {r: torch.cat([p[r] for p in parts]).float().cpu() for r in parts[0]}

    def _views(self, path: str, start: int, length: int) -> tuple[torch.Tensor, list[str]]:
        """uint8 views (V, 3, 2T, S, S) and the suffix of each view's row group."""
        o, n, size = self.opt, self.data.num_frames, self.data.input_size
        if o.window:
            fps = video_info(path).fps
            win, step = max(1, round(o.window * fps)), max(1, round((o.stride or o.window) * fps))
            starts = list(range(0, max(length - win, 0) + 1, step))
            idx = [start + s + i for s in starts for i in segment_indices(min(win, length), n, False, view=1,
                                                                             num_views=2)[0]]
            frames = read_frames(path, idx)  # one decode for all windows
            frames = frames.view(len(starts), n, *frames.shape[1:])  # (windows, 2T, H, W, 3)
            views = torch.stack([test_crops(f, size, size, 1)[0] for f in frames])
            return views, [f"@{s / fps:.3f}s" for s in starts]
        per_clip = [[start + i for i in segment_indices(length, n, False, view=v, num_views=o.clips)[0]]
                    for v in range(o.clips)]
        frames = read_frames(path, [i for idx in per_clip for i in idx])
        frames = frames.view(o.clips, n, *frames.shape[1:])  # (clips, 2T, H, W, 3)
        views = torch.stack([c for f in frames for c in test_crops(f, size, size, o.crops)])  # (clips*crops, ...)
        groups = [f"#clip{v}" for v in range(o.clips)] if o.per_clip else [""]
        return views, groups

    def rows(self, item: tuple[str, int, int | None]) -> tuple[list[str], dict[str, torch.Tensor]]:
        """Row keys and {role: (rows, D)} of one input: view embeddings averaged within each row's views."""
        path, start, length = item
        length = length or video_info(path).num_frames - start
        views, groups = self._views(path, start, length)
        emb = self._embed(views)
        per_row = len(views) // len(groups)
        key = item_key(item)
        return [key + g for g in groups], {r: e.view(len(groups), per_row, -1).mean(1) for r, e in emb.items()}


def _save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    if path.suffix == ".npz":
        def write(f):
            np.savez(f, **{k: v.numpy() for k, v in tensors.items()}, metadata=np.array(json.dumps(meta)))
        atomic_write(path, write)
        return
    from safetensors.torch import save

    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write(path, lambda f: f.write(blob))


def load_features(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A features file (.safetensors or .npz) -> tensors and the string metadata."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["metadata"]))
            return {k: torch.from_numpy(z[k]) for k in z.files if k != "metadata"}, meta
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def _read_parts(folder: Path) -> tuple[list[str], list[str], dict[str, torch.Tensor], list[dict]]:
    keys, owners, tensors, failed = [], [], {r: [] for r in ROLES}, []
    for part in sorted(folder.glob("part-*.safetensors")):
        t, meta = load_features(part)
        keys += json.loads(meta["rows"])
        owners += json.loads(meta["row_items"])
        failed += json.loads(meta["failed"])
        for r in ROLES:
            if r in t:
                tensors[r].append(t[r])
    return keys, owners, {r: torch.cat(v) for r, v in tensors.items() if v}, failed


def _done_items(out: Path, options: FeatureOptions) -> set[str]:
    """Inputs already finished in OUT or in its parts folder (videos that failed are tried again)."""
    done = set()
    sources = [load_features(out)[1]] if out.exists() else []
    sources += [load_features(p)[1] for p in sorted(_parts_dir(out).glob("part-*.safetensors"))]
    mine = _row_options(options)
    for meta in sources:
        if meta.get("options") != mine:
            raise ConfigError(f"{out}: earlier rows were made with other options ({meta.get('options')}); "
                              "use another --out or the same options")
        done |= set(json.loads(meta.get("items", "[]")))
    return done


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


class _PartWriter:
    def __init__(self, folder: Path, rank: int, options: FeatureOptions):
        self.folder, self.rank, self.flush_every = folder, rank, options.flush_every
        self.options = _row_options(options)
        folder.mkdir(parents=True, exist_ok=True)
        self.count = len(list(folder.glob(f"part-{rank:03d}-*.safetensors")))
        self.reset()

    def reset(self) -> None:
        self.items, self.rows, self.owners, self.failed, self.tensors = [], [], [], [], {r: [] for r in ROLES}

    def add(self, item: str, rows: list[str], emb: dict[str, torch.Tensor]) -> None:
        self.items.append(item)
        self.rows += rows
        self.owners += [item] * len(rows)
        for r, e in emb.items():
            self.tensors[r].append(e)
        if len(self.items) + len(self.failed) >= self.flush_every:
            self.flush()

    def fail(self, item: str, error: str) -> None:
        self.failed.append({"item": item, "error": error})

    def flush(self) -> None:
        if not self.items and not self.failed:
            return
        tensors = {r: torch.cat(v) for r, v in self.tensors.items() if v}
        meta = {"items": json.dumps(self.items), "rows": json.dumps(self.rows), "row_items": json.dumps(self.owners),
                "failed": json.dumps(self.failed), "options": self.options}
        _save(self.folder / f"part-{self.rank:03d}-{self.count:05d}.safetensors", tensors, meta)
        self.count += 1
        self.reset()


def extract_features(model: CAST, inputs: list[str], out: str | Path, options: FeatureOptions,
                     class_names: dict | None = None, device: str = "cpu", info: DistInfo | None = None,
                     progress: bool = True, data: DataConfig | None = None, fmt: str | None = None) -> dict:
    """Write the features of `inputs` to `out` (.safetensors or .npz); returns a summary. Resumable.
    Annotation files among the inputs are read with `data` and `fmt` (see `annotation_config`)."""
    out, info = Path(out), info or DistInfo()
    if out.suffix not in (".safetensors", ".npz"):
        raise ConfigError(f"--out {out}: the features file must end in .safetensors or .npz")
    items = collect_inputs(inputs, data, fmt)
    done = _done_items(out, options)
    todo = [it for i, it in enumerate(items) if i % info.world == info.rank and item_key(it) not in done]
    extractor = FeatureExtractor(model, options, device)
    writer = _PartWriter(_parts_dir(out), info.rank, options)
    for item in tqdm(todo, desc="features", disable=not (progress and info.main), dynamic_ncols=True):
        try:
            keys, emb = extractor.rows(item)
        except (DataError, OSError, RuntimeError) as err:  # a bad video is reported and skipped, not fatal
            log.warning("skipping %s: %s", item_key(item), err)
            writer.fail(item_key(item), str(err))
            continue
        writer.add(item_key(item), keys, emb)
    writer.flush()
    if info.world > 1:
        torch.distributed.barrier()
    if not info.main:
        return {}
    return _assemble(out, items, model, options, class_names)


def _assemble(out: Path, items: list, model: CAST, options: FeatureOptions, class_names: dict | None) -> dict:
    keys, owners, tensors, failed = _read_parts(_parts_dir(out))
    if out.exists():  # a finished earlier run: its rows stay, new ones are added
        old, meta = load_features(out)
        keys, owners = json.loads(meta["rows"]) + keys, json.loads(meta["row_items"]) + owners
        tried = set(owners) | {f["item"] for f in failed}
        failed = [f for f in json.loads(meta["failed"]) if f["item"] not in tried] + failed
        tensors = {r: torch.cat([old[r], tensors[r]]) if r in tensors else old[r] for r in old}
    order = {item_key(it): i for i, it in enumerate(items)}
    perm = sorted(range(len(keys)), key=lambda i: (order.get(owners[i], len(order)), i))  # input order
    keys, owners = [keys[i] for i in perm], [owners[i] for i in perm]
    tensors = {r: t[perm] for r, t in tensors.items()}
    meta = {"rows": json.dumps(keys), "row_items": json.dumps(owners), "items": json.dumps(sorted(set(owners))),
            "failed": json.dumps(failed),
            "class_names": json.dumps(class_names or {}), "config": json.dumps(dataclasses.asdict(model.config)),
            "options": _row_options(options)}
    if keys:
        _save(out, tensors, meta)
    shutil.rmtree(_parts_dir(out), ignore_errors=True)
    return {"rows": len(keys), "dims": {r: t.shape[1] for r, t in tensors.items()}, "failed": failed}
