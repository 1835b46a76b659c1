"""Evaluation outputs on disk: metrics, per-video predictions, the EK100 submission, and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import confusion_matrix, epic_submission, per_class_prf


def write_outputs(out_dir: str | Path, metrics: dict, results: dict, class_names: dict[str, list[str]] | None = None,
                  plots: bool = True) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json", out / "predictions.json"]
    written[0].write_text(json.dumps(metrics, indent=2))
    names = class_names or {}

    def name(task: str, label: int) -> str:
        return names[task][label] if label < len(names.get(task, [])) else str(label)

    rows = [{"id": vid, **{t: results["scores"][t][i].round(6).tolist() for t in results["scores"]},
             **{f"{t}_predicted": name(t, int(results["scores"][t][i].argmax())) for t in results["scores"]},
             **{f"{t}_label": int(results["labels"][t][i]) for t in results["labels"]},
             **{f"{t}_label_name": name(t, int(results["labels"][t][i])) for t in results["labels"]}}
            for i, vid in enumerate(results["id"])]
    written[1].write_text(json.dumps(rows))
    if {"verb", "noun"} <= set(results["scores"]):
        path = out / "ek100_submission.json"
        path.write_text(json.dumps(epic_submission(results["id"], results["scores"])))
        written.append(path)
    if plots:
        for task, labels in results["labels"].items():
            names = (class_names or {}).get(task)
            written += _plots(out, task, results["scores"][task], labels, names)
    return written


def _plots(out: Path, task: str, scores: np.ndarray, labels: np.ndarray, names: list[str] | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = scores.shape[1]
    cm = confusion_matrix(scores.argmax(1), labels, n)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xlabel="predicted", ylabel="true", title=f"{task}: confusion (row-normalised)")
    if names and n <= 30:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
    fig.colorbar(image)
    fig.tight_layout()
    cm_path = out / f"confusion_{task}.png"
    fig.savefig(cm_path, dpi=120)
    plt.close(fig)
    f1 = per_class_prf(scores, labels)["f1"] * 100
    fig, ax = plt.subplots(figsize=(max(6, n * 0.25), 4))
    ax.bar(range(n), f1)
    ax.set(xlabel="class", ylabel="F1 (%)", title=f"{task}: per-class F1", ylim=(0, 100))
    if names and n <= 60:
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    fig.tight_layout()
    f1_path = out / f"f1_{task}.png"
    fig.savefig(f1_path, dpi=120)
    plt.close(fig)
    return [cm_path, f1_path]
