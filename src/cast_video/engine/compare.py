"""The paper's analyses from evaluation folders (what `cast-video eval` writes: metrics.json, predictions.json).

- per-class F1 improvement of A over B, sorted, per task (Figures 11-14), the mean improvement in the title;
- with class groups, the support-weighted F1 of each group and its improvement (Figure 5);
- the harmonic mean of the tasks' top-1 (Figure 4(c)): within each folder, and across folders per model;
- a qualitative page (Figures 6 and 15): videos where A and B predict differently, with the truth.
Every PNG has a Markdown table of its numbers beside it.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import atomic_write, atomic_write_text
from .metrics import group_f1, harmonic_mean, per_class_prf


@dataclass
class EvalRun:
    """One evaluation folder: per-video scores and labels per task, its metrics and (if known) class names."""

    folder: Path
    ids: list[str]
    scores: dict[str, np.ndarray]  # task -> (N, C)
    labels: dict[str, np.ndarray]  # task -> (N,)
    metrics: dict
    names: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.folder.name if self.folder.name not in ("", ".") else str(self.folder)


def load_eval(folder: str | Path) -> EvalRun:
    folder = Path(folder)
    for name in ("metrics.json", "predictions.json"):
        if not (folder / name).exists():
            raise DataError(f"{folder}: no {name}; pass a folder written by `cast-video eval`")
    rows = json.loads((folder / "predictions.json").read_text())
    if not rows:
        raise DataError(f"{folder / 'predictions.json'}: no predictions")
    tasks = [k[: -len("_label")] for k in rows[0] if k.endswith("_label")]
    scores, labels = {}, {}
    for task in tasks:
        if task not in rows[0]:
            raise DataError(f"{folder / 'predictions.json'}: row 1 has {task}_label but no {task} scores")
        scores[task] = np.asarray([r[task] for r in rows], dtype=np.float64)
        labels[task] = np.asarray([r[f"{task}_label"] for r in rows], dtype=np.int64)
    return EvalRun(folder, [str(r["id"]) for r in rows], scores, labels,
                   json.loads((folder / "metrics.json").read_text()), names_in_rows(rows, scores, labels))


def names_in_rows(rows: list[dict], scores: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict:
    """Class names from what `cast-video eval` writes beside each row's ids: `{task}_label_name` (the truth's)
    and `{task}_predicted` (the top class's). A class no video has as truth or prediction keeps its id; a task
    whose eval knew no names (every name is the id itself) has none."""
    names = {}
    for task, y in labels.items():
        known = [str(c) for c in range(scores[task].shape[1])]
        for row, label, top in zip(rows, y, scores[task].argmax(1), strict=True):
            for cls, key in ((label, f"{task}_label_name"), (top, f"{task}_predicted")):
                if key in row:
                    known[cls] = str(row[key])
        if known != [str(c) for c in range(len(known))]:
            names[task] = known
    return names


def align(a: EvalRun, b: EvalRun) -> tuple[EvalRun, EvalRun]:
    """Both runs restricted to the videos and tasks they share, in A's order."""
    common = set(b.ids)
    keep_a = [i for i, v in enumerate(a.ids) if v in common]
    where_b = {v: i for i, v in enumerate(b.ids)}
    keep_b = [where_b[a.ids[i]] for i in keep_a]
    tasks = [t for t in a.scores if t in b.scores]
    if not keep_a or not tasks:
        raise DataError(f"{a.folder} and {b.folder} share no videos or no tasks")
    for t in tasks:
        if a.scores[t].shape[1] != b.scores[t].shape[1]:
            raise DataError(f"task {t}: {a.folder} has {a.scores[t].shape[1]} classes, {b.folder} "
                            f"{b.scores[t].shape[1]}")
        if not np.array_equal(a.labels[t][keep_a], b.labels[t][keep_b]):
            raise DataError(f"task {t}: {a.folder} and {b.folder} disagree on the labels of the same videos")

    def subset(run: EvalRun, keep: list[int]) -> EvalRun:
        return EvalRun(run.folder, [run.ids[i] for i in keep], {t: run.scores[t][keep] for t in tasks},
                       {t: run.labels[t][keep] for t in tasks}, run.metrics, run.names)

    return subset(a, keep_a), subset(b, keep_b)


def read_groups(path: str | Path) -> dict[str, dict[str, list[int]]]:
    """Class groups: JSON/YAML {task: {group: [class ids]}} (a train config's `groups:` works), or a CSV with
    `id` and `category` columns (EK100's EPIC_100_noun_classes.csv: groups for task "noun")."""
    path = Path(path)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not {"id", "category"} <= set(reader.fieldnames or []):
                raise DataError(f"{path}:1: needs columns 'id' and 'category', found {reader.fieldnames}")
            groups: dict[str, list[int]] = {}
            for row in reader:
                groups.setdefault(row["category"], []).append(int(row["id"]))
        return {"noun": groups}
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    data = data.get("groups", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected {{task: {{group: [class ids]}}}} (or a config with `groups:`)")
    return {t: {g: [int(c) for c in ids] for g, ids in gs.items()} for t, gs in data.items()}


def _name(names: dict[str, list[str]], task: str, c: int) -> str:
    n = names.get(task)
    return n[c] if n and c < len(n) else str(c)


def f1_improvement(a: EvalRun, b: EvalRun, task: str) -> list[dict]:
    """Per class present in the labels: F1 of A, of B and A - B (in %), sorted by improvement, best first."""
    fa = per_class_prf(a.scores[task], a.labels[task])
    fb = per_class_prf(b.scores[task], b.labels[task])
    names = a.names or b.names
    rows = [{"class": int(c), "name": _name(names, task, int(c)), "support": int(fa["support"][c]),
             "f1_a": 100 * fa["f1"][c], "f1_b": 100 * fb["f1"][c], "improvement": 100 * (fa["f1"][c] - fb["f1"][c])}
            for c in np.flatnonzero(fa["support"] > 0)]
    return sorted(rows, key=lambda r: (-r["improvement"], r["class"]))


def _md_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]) + "\n"


def _save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def improvement_chart(rows: list[dict], task: str, la: str, lb: str, out: Path) -> list[Path]:
    plt = _plt()
    values = [r["improvement"] for r in rows]
    mean = float(np.mean(values))
    fig, ax = plt.subplots(figsize=(min(24, max(6, 0.18 * len(rows) + 2)), 4))
    ax.bar(range(len(rows)), values, color=["#2a9d8f" if v >= 0 else "#e76f51" for v in values])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set(ylabel="F1 improvement (%)", xlim=(-0.6, len(rows) - 0.4),
           title=f"{task}: per-class F1 of {la} over {lb}\nmean improvement {mean:+.2f}")
    if len(rows) <= 60:
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{len(rows)} classes, sorted by improvement")
    png = out / f"f1_improvement_{task}.png"
    _save_png(fig, png)
    md = out / f"f1_improvement_{task}.md"
    atomic_write_text(md, f"# {task}: per-class F1, {la} vs {lb} (mean improvement {mean:+.2f})\n\n" + _md_table(
        ["class", "name", "support", f"F1 {la}", f"F1 {lb}", "improvement"],
        [[r["class"], r["name"], r["support"], r["f1_a"], r["f1_b"], r["improvement"]] for r in rows]))
    return [png, md]


def group_chart(a: EvalRun, b: EvalRun, task: str, groups: dict[str, list[int]], out: Path) -> list[Path]:
    """Figure 5: each group's support-weighted F1 for A and B, bars of the improvement."""
    ga = group_f1(a.scores[task], a.labels[task], groups)
    gb = group_f1(b.scores[task], b.labels[task], groups)
    rows = sorted(([g, ga[g], gb[g], ga[g] - gb[g]] for g in ga), key=lambda r: -r[3])
    if not rows:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(rows) + 2), 4))
    ax.bar(range(len(rows)), [r[3] for r in rows], color=["#2a9d8f" if r[3] >= 0 else "#e76f51" for r in rows])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=60, ha="right", fontsize=8)
    mean = float(np.mean([r[3] for r in rows]))
    ax.set(ylabel="weighted F1 improvement (%)",
           title=f"{task} groups: weighted F1 of {a.label} over {b.label}\nmean improvement {mean:+.2f}")
    png = out / f"group_f1_{task}.png"
    _save_png(fig, png)
    md = out / f"group_f1_{task}.md"
    atomic_write_text(md, f"# {task}: support-weighted F1 per group\n\n" + _md_table(
        ["group", f"F1 {a.label}", f"F1 {b.label}", "improvement"], rows))
    return [png, md]


def main_top1(run: EvalRun) -> float:
    """A folder's headline top-1: EK100's action top-1 if there, else its task's (or tasks' harmonic mean)."""
    if "action/top1" in run.metrics:
        return float(run.metrics["action/top1"])
    tops = [top1(run, t) for t in run.scores]
    return harmonic_mean(tops) if len(tops) > 1 else tops[0]


def top1(run: EvalRun, task: str) -> float:
    return 100 * float((run.scores[task].argmax(1) == run.labels[task]).mean())


def harmonic_chart(table: dict[str, dict[str, float]], title: str, out: Path) -> list[Path]:
    """Figure 4(c): {model: {column: top-1}} as grouped bars, each model's harmonic mean of its columns last."""
    plt = _plt()
    columns = list(next(iter(table.values())))
    width = 0.8 / (len(columns) + 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(table) + 2), 4))
    rows = []
    for m, (model, values) in enumerate(table.items()):
        tops = [values[c] for c in columns]
        rows.append([model, *tops, harmonic_mean(tops)])
        for d, v in enumerate(rows[-1][1:]):
            ax.bar(m + (d - len(columns) / 2) * width, v, width, color=f"C{d}" if d < len(columns) else "black",
                   label=[*columns, "harmonic mean"][d] if m == 0 else None)
    ax.set_xticks(range(len(table)), list(table))
    ax.set(ylabel="top-1 (%)", title=title)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(columns) + 1)
    png = out / "harmonic_mean.png"
    _save_png(fig, png)
    md = out / "harmonic_mean.md"
    atomic_write_text(md, f"# {title}\n\n" + _md_table(["model", *columns, "harmonic mean"], rows))
    return [png, md]


def disagreements(a: EvalRun, b: EvalRun, limit: int) -> list[int]:
    """Videos where A and B predict differently in some task: A right and B wrong first, then the reverse."""
    def right(run: EvalRun, i: int) -> bool:
        return all(run.scores[t][i].argmax() == run.labels[t][i] for t in run.scores)

    differ = [i for i in range(len(a.ids)) if any(a.scores[t][i].argmax() != b.scores[t][i].argmax() for t in a.scores)]
    return sorted(differ, key=lambda i: (not (right(a, i) and not right(b, i)), not right(b, i), i))[:limit]


def _thumbs(frames) -> str:
    from PIL import Image

    cells = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).resize((96, round(96 * f.shape[0] / f.shape[1]))).save(buf, format="PNG")
        cells.append(f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">')
    return "".join(cells)


def qualitative_page(a: EvalRun, b: EvalRun, picks: list[int], frames_of, out: Path) -> Path:
    """`frames_of(video id)` -> a few uint8 frames (H, W, 3) or None when the video cannot be found."""
    names = a.names or b.names
    blocks = []
    for i in picks:
        lines = []
        for t in a.scores:
            truth, pa, pb = int(a.labels[t][i]), int(a.scores[t][i].argmax()), int(b.scores[t][i].argmax())

            def mark(p, truth=truth):
                return "ok" if p == truth else "bad"

            lines.append(f"<tr><td>{t}</td><td>{html.escape(_name(names, t, truth))}</td>"
                         f"<td class={mark(pa)}>{html.escape(_name(names, t, pa))} "
                         f"({a.scores[t][i][pa]:.2f})</td><td class={mark(pb)}>{html.escape(_name(names, t, pb))} "
                         f"({b.scores[t][i][pb]:.2f})</td></tr>")
        frames = frames_of(a.ids[i])
        thumbs = _thumbs(frames) if frames is not None else "<i>video not found</i>"
        blocks.append(f"<div class=v><h3>{html.escape(a.ids[i])}</h3><div>{thumbs}</div><table><tr><th>task</th>"
                      f"<th>truth</th><th>{html.escape(a.label)}</th><th>{html.escape(b.label)}</th></tr>"
                      + "".join(lines) + "</table></div>")
    page = ("<!doctype html><html><head><meta charset=utf-8><title>A vs B</title><style>body{font-family:sans-serif}"
            ".v{margin:14px 0;border-top:1px solid #ddd}.ok{color:#1b7f3b}.bad{color:#b3261e}td,th{padding:2px 8px}"
            f"</style></head><body><h1>{html.escape(a.label)} vs {html.escape(b.label)}: where they differ</h1>"
            + "".join(blocks) + "</body></html>")
    path = out / "qualitative.html"
    atomic_write_text(path, page)
    return path


def compare(a: EvalRun, b: EvalRun, out: str | Path, groups: dict | None = None,
            across: dict[str, list[EvalRun]] | None = None, frames_of=None, num_qualitative: int = 12) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    a, b = align(a, b)
    written = []
    for task in a.scores:
        written += improvement_chart(f1_improvement(a, b, task), task, a.label, b.label, out)
        if (groups or {}).get(task):
            written += group_chart(a, b, task, groups[task], out)
    if across:  # several evaluations per model: each folder's headline top-1
        if len({len(runs) for runs in across.values()}) > 1:
            raise DataError("--hm: every model needs the same number of evaluation folders, in the same order")
        labels = [{runs[i].label for runs in across.values()} for i in range(len(next(iter(across.values()))))]
        columns = [next(iter(s)) if len(s) == 1 else f"eval {i + 1}" for i, s in enumerate(labels)]
        if len(set(columns)) < len(columns):
            columns = [f"eval {i + 1}" for i in range(len(columns))]
        table = {m: dict(zip(columns, map(main_top1, runs), strict=True)) for m, runs in across.items()}
        written += harmonic_chart(table, "top-1 per evaluation and their harmonic mean", out)
    elif len(a.scores) > 1:  # one evaluation with several tasks (EK100's verb and noun)
        table = {r.label: {t: top1(r, t) for t in r.scores} for r in (a, b)}
        written += harmonic_chart(table, "top-1 per task and their harmonic mean", out)
    written.append(qualitative_page(a, b, disagreements(a, b, num_qualitative), frames_of or (lambda _: None), out))
    return written
