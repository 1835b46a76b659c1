"""The README's explain picture and compare chart, from a finished demo run folder (`make demo`).

    PYTHONPATH=src .venv/bin/python tools/demo_figures.py RUN_DIR [--work DIR] [--docs docs]

1. `cast-video eval` of the run's CAST and late-fusion models on the test split (their config.json and
   best checkpoint, the run's videos and class files), into WORK/CAST and WORK/late fusion; an eval folder
   already in WORK is reused (WORK defaults to a temporary folder, removed at the end). Nothing is
   written into RUN_DIR.
2. `cast-video compare` of the two: DOCS/compare_demo.png is its per-verb F1 chart.
3. The explain picture: among the first `--candidates` test clips (in id order) whose verb is a move and
   where CAST is right on verb and noun, the one where the attention the spatial patches receive through
   S2T in the last block (mean of heads and queries, the shown view) peaks on the digit in most frames:
   the score is the mean over frames of the digit's share of the peak patch. The digit is where the frame
   is bright (every channel above 150: the demo draws it in bright colours on a darker background). Its
   full `cast-video explain` output goes to WORK/explain, and DOCS/explain_demo.png draws its frames, that
   S2T map and Grad-CAM of the noun (spatial expert) and verb (temporal expert).

Every step is deterministic (fixed views, no sampling), so a rerun on the same run draws the same pictures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cast_video.cli import main as cli
from cast_video.engine.explain import explain_clip
from cast_video.engine.explain_page import overlay, received, write_explanation
from cast_video.engine.rundir import head_labels
from cast_video.errors import DataError
from cast_video.files import atomic_write
from cast_video.weights import from_pretrained

METHODS = {"cast": "CAST", "late_concat": "late fusion"}
BRIGHT = 150  # uint8: the digit's darkest channel is above it, the demo's background below


def run_eval(run: Path, method: str, out: Path) -> Path:
    if (out / "predictions.json").exists():
        return out
    model_dir = run / "models" / method
    ann = run / "data" / "annotations"
    if not (model_dir / "checkpoints" / "best.pt").exists():
        raise DataError(f"{model_dir}: no checkpoints/best.pt; is {run} a finished demo run?")
    args = ["eval", str(model_dir / "config.json"), "--checkpoint", str(model_dir / "checkpoints" / "best.pt"),
            f"data.root={run / 'data' / 'videos'}", f"data.test={ann / 'EPIC_100_test.csv'}",
            'data.video_template="{participant_id}/{video_id}.mp4"',
            f"data.class_names.verb={ann / 'EPIC_100_verb_classes.csv'}",
            f"data.class_names.noun={ann / 'EPIC_100_noun_classes.csv'}", "num_workers=0",
            "--split", "test", "--out", str(out), "--no-progress"]
    if cli(args) != 0:
        raise DataError(f"cast-video eval of {model_dir} failed")
    return out


def video_of(run: Path, narration_id: str) -> Path:
    """The demo's layout: videos/P03/P03_00012.mp4 for narration P03_00012_0."""
    video_id = narration_id.rsplit("_", 1)[0]
    return run / "data" / "videos" / video_id.split("_")[0] / f"{video_id}.mp4"


def digit_patches(frames: np.ndarray, grid: int) -> np.ndarray:
    """(T, S, S, 3) uint8 -> (T, grid*grid): the share of each patch's pixels that are the bright digit."""
    bright = frames.min(-1) > BRIGHT  # (T, S, S)
    t, s = bright.shape[:2]
    p = s // grid
    return bright.reshape(t, grid, p, grid, p).mean((2, 4)).reshape(t, -1)


def on_digit(heat: np.ndarray, digit: np.ndarray) -> float:
    """How well a (T, N) map follows the digit: the mean over frames of the digit's share of the patch where
    that frame's map peaks (1: every frame's peak is a patch full of digit)."""
    return float(digit[np.arange(len(heat)), heat.argmax(1)].mean())


def pick_clip(run: Path, model, names: dict, rows: list[dict], candidates: int):
    """(score, explanation, predictions.json row) of the chosen clip; the first in id order wins a tie."""
    best = None
    chosen = [r for r in sorted(rows, key=lambda r: r["id"]) if r["verb_label_name"].startswith("move")
              and r["verb_predicted"] == r["verb_label_name"] and r["noun_predicted"] == r["noun_label_name"]]
    for row in chosen[:candidates]:
        exp = explain_clip(model, video_of(run, row["id"]), names)
        shown = exp.one_view()
        heat = s2t_received(shown)
        score = on_digit(heat, digit_patches(shown.frames.numpy(), shown.grid))
        if best is None or score > best[0]:
            best = (score, exp, row)
    if best is None:
        raise DataError("no test clip with a move verb that CAST gets right")
    return best


def s2t_received(shown) -> np.ndarray:
    last = max(layer for layer, dirs in shown.maps.items() if "s2t" in dirs)
    return received(shown.maps[last]["s2t"], shown.windows["s2t"], shown.frames.shape[0]).numpy()


def explain_picture(shown, truth: str, path: Path) -> None:
    """Rows: the frames, S2T received, Grad-CAM noun and verb; each frame's map scaled to its own peak (where
    the map is in each frame, not how its total changes over the frames)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, g, steps = shown.frames.numpy(), shown.grid, shown.frames.shape[0]
    last = max(layer for layer, dirs in shown.maps.items() if "s2t" in dirs)
    rows = [("frames the model saw", None),
            (f"S2T, block {last}: attention each\nspatial patch receives", s2t_received(shown)),
            ("Grad-CAM noun,\nspatial expert", shown.relevance["noun"]["spatial"].numpy()),
            ("Grad-CAM verb,\ntemporal expert", shown.relevance["verb"]["temporal"].numpy())]
    fig, axes = plt.subplots(len(rows), steps, figsize=(1.5 * steps + 1.6, 1.55 * len(rows) + 0.5), squeeze=False)
    for (label, heat), line in zip(rows, axes, strict=True):
        for t, ax in enumerate(line):
            if heat is None:
                image = overlay(frames[t], np.zeros((g, g)), 5.0, alpha=0.0)
            else:
                image = overlay(frames[t], heat[t].reshape(g, g), 5.0)
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if heat is None:
                ax.set_title(f"t={t} (frame {shown.mapping['spatial_frames'][t]})", fontsize=8)
        line[0].set_ylabel(label, fontsize=8)
    top = {h: shown.top[h][0] for h in ("verb", "noun")}
    name = Path(shown.video).stem
    fig.suptitle(f"{name} ({truth}): CAST predicts {top['verb']['name']} ({top['verb']['score']:.2f}), "
                 f"digit {top['noun']['name']} ({top['noun']['score']:.2f})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def figures(run: Path, work: Path, docs: Path, candidates: int) -> dict:
    evals = {m: run_eval(run, m, work / label) for m, label in METHODS.items()}  # the labels name the charts
    if cli(["compare", str(evals["cast"]), str(evals["late_concat"]), "--out", str(work / "compare")]) != 0:
        raise DataError("cast-video compare failed")
    shutil.copyfile(work / "compare" / "f1_improvement_verb.png", docs / "compare_demo.png")
    model = from_pretrained(run / "models" / "cast" / "model")
    rows = json.loads((evals["cast"] / "predictions.json").read_text())
    score, exp, row = pick_clip(run, model, head_labels(model.config), rows, candidates)
    write_explanation(exp, work / "explain")
    truth = f"truth: {row['verb_label_name'].replace('_', ' ')}, digit {row['noun_label_name']}"
    explain_picture(exp.one_view(), truth, docs / "explain_demo.png")
    return {"clip": exp.video, "digit_share_at_s2t_peak": round(score, 3), "view": exp.view,
            "compare": str(docs / "compare_demo.png"), "explain": str(docs / "explain_demo.png")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a demo run folder (what `make demo` writes)")
    p.add_argument("--work", type=Path, help="keep the eval, compare and explain folders here (and reuse them)")
    p.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    p.add_argument("--candidates", type=int, default=48, help="test clips tried for the explain picture")
    args = p.parse_args()
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(figures(args.run, args.work, args.docs, args.candidates)))
        return
    with tempfile.TemporaryDirectory() as work:
        print(json.dumps(figures(args.run, Path(work), args.docs, args.candidates)))


if __name__ == "__main__":
    main()
