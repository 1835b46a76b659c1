"""The files `cast-video explain` writes for one `Explanation`: a self-contained index.html, PNG grids per
layer and direction, relevance PNGs, an animated GIF (all of one view, `Explanation.one_view`), the raw maps
of every view (safetensors) and the frame mapping of every view (JSON).

Two views of a cross-attention map are drawn on the frames (T steps, N = g x g patches):
  "query": for one query token (step tq, patch q), where its attention goes, as a heat map over every frame;
  "received": the attention each key token receives, averaged over heads and queries (the GIF, the overview).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write, atomic_write_json, atomic_write_text
from .explain import Explanation
from .explain_html import PAGE

MAX_QUERIES_PER_FRAME = 64  # the page stores S2T rows of at most this many query patches per frame (B/16: 49)


def query_heat(attn: torch.Tensor, window: str, tq: int, q: int, steps: int) -> torch.Tensor:
    """(T, N) heat over the key tokens of query (tq, q) for one head's map (`capture` layouts, no batch or head).
    space: each frame shows its own step's attention of patch q; time: every patch's attention from step tq to
    each key step (the T2S distribution over time of every place); spacetime: the one query's full row."""
    if window == "space":  # (T, N, N)
        return attn[:, q, :]
    if window == "time":  # (N, T, T)
        return attn[:, tq, :].T
    n = attn.shape[-1] // steps
    return attn[tq * n + q].view(steps, n)  # (T*N, T*N) -> (T, N)


def received(attn: torch.Tensor, window: str, steps: int) -> torch.Tensor:
    """(H, ...) map -> (T, N): attention each key token receives, averaged over heads and queries."""
    mean = attn.float().mean(0)
    if window == "space":  # (T, N, N)
        return mean.mean(1)
    if window == "time":  # (N, T, T)
        return mean.mean(1).T
    return mean.mean(0).view(steps, -1)


def default_query(exp: Explanation) -> tuple[int, int]:
    """(step, patch) with the highest Grad-CAM relevance, each head's and expert's map scaled to max 1 and
    summed: where the evidence is, so the attention shown first is that of a token that matters."""
    steps, n = exp.frames.shape[0], exp.grid**2
    total = torch.zeros(steps, n)
    for experts in exp.relevance.values():
        for cam in experts.values():
            total += cam / cam.max().clamp_min(1e-12)
    if not total.any():
        return steps // 2, (exp.grid // 2) * exp.grid + exp.grid // 2  # the centre patch of the middle step
    best = int(total.argmax())
    return best // n, best % n


def _colour(heat: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["inferno"](heat)[..., :3]


def overlay(frame: np.ndarray, heat: np.ndarray, scale: float, alpha: float = 0.7,
            peak: float | None = None) -> np.ndarray:
    """uint8 frame (S, S, 3) and a (g, g) heat -> uint8 (S*scale, S*scale, 3) with the heat blended in, more
    opaque where it is higher; `peak` (default: the heat's max) maps to the top of the colour scale."""
    size = round(frame.shape[0] * scale)
    idx = np.minimum((np.arange(size) / scale).astype(int), frame.shape[0] - 1)
    big = frame[idx][:, idx].astype(np.float32) / 255
    g = heat.shape[0]
    cells = np.minimum((np.arange(size) * g / size).astype(int), g - 1)
    h = np.clip(heat / max(float(heat.max() if peak is None else peak), 1e-12), 0, 1)[cells][:, cells]
    a = alpha * h[..., None]
    return (np.clip((1 - a) * big + a * _colour(h), 0, 1) * 255).round().astype(np.uint8)


def _scale(exp: Explanation) -> float:
    return max(1.0, 160 / exp.frames.shape[1])


def _grid_image(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    h, w = rows[0][0].shape[:2]
    out = np.full((len(rows) * (h + pad), len(rows[0]) * (w + pad), 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = img
    return out


def _save_grid(path: Path, image: np.ndarray, title: str, row_labels: list[str], col_labels: list[str]) -> None:
    """The grid as drawn, pixel for pixel, with its title above, a label left of each row and under each
    column, in PIL's own font. Not matplotlib: resampling and re-encoding a B/16 grid (13 x 8 frames of
    224 px) through a figure took ~6 s per grid, most of `explain`'s time."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    left, top, bottom = 10 + 6 * max(map(len, row_labels)), 20, 18  # the default font is ~6 x 11 px
    canvas = Image.new("RGB", (left + w + 4, top + h + bottom), "white")
    canvas.paste(Image.fromarray(image), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    for i, label in enumerate(row_labels):
        draw.text((4, top + (i + 0.5) * h / len(row_labels) - 5), label, fill="black")
    for j, label in enumerate(col_labels):
        draw.text((left + (j + 0.5) * w / len(col_labels) - 3 * len(label), top + h + 4), label, fill="black")
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", compress_level=1)  # fast; the maps are what matters
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def _frame_labels(exp: Explanation) -> list[str]:
    return [f"t={t} (#{f})" for t, f in enumerate(exp.mapping["spatial_frames"])]


def attention_grids(exp: Explanation, out: Path) -> list[Path]:
    """One PNG per layer and direction: rows are the heads and their mean, columns the frames; the query is
    `default_query`'s token."""
    frames, steps, g, scale = exp.frames.numpy(), exp.frames.shape[0], exp.grid, _scale(exp)
    tq, q = default_query(exp)
    written = []
    for layer, dirs in exp.maps.items():
        for direction, attn in dirs.items():
            window = exp.windows[direction]
            heads = [attn[h] for h in range(attn.shape[0])] + [attn.float().mean(0)]
            rows = []
            for m in heads:
                heat = query_heat(m, window, tq, q, steps).float()  # (T, N), one colour scale per row
                rows.append([overlay(frames[t], heat[t].view(g, g).numpy(), scale, peak=float(heat.max()))
                             for t in range(steps)])
            path = out / f"attention_layer{layer:02d}_{direction}.png"
            what = {"space": f"patch {q}'s attention at each step", "time": f"every place's attention from step {tq}",
                    "spacetime": f"query (t={tq}, patch {q})"}[window]
            _save_grid(path, _grid_image(rows), f"layer {layer} {direction.upper()} ({window} window): {what}",
                       [f"head {h}" for h in range(attn.shape[0])] + ["mean"], _frame_labels(exp))
            written.append(path)
    return written


def relevance_grid(exp: Explanation, out: Path) -> Path:
    frames, steps, g, scale = exp.frames.numpy(), exp.frames.shape[0], exp.grid, _scale(exp)
    rows, labels = [], []
    for head, experts in exp.relevance.items():
        for expert, cam in experts.items():
            rows.append([overlay(frames[t], cam[t].view(g, g).numpy(), scale, peak=float(cam.max()))
                         for t in range(steps)])
            labels.append(f"{head}: {_class_name(exp, head)} / {expert}")
    path = out / "relevance.png"
    _save_grid(path, _grid_image(rows), "Grad-CAM on the tokens entering the last block", labels, _frame_labels(exp))
    return path


def _class_name(exp: Explanation, head: str) -> str:
    idx = exp.targets[head]
    names = exp.names.get(head)
    return names[idx] if names and idx < len(names) else str(idx)


def animation(exp: Explanation, out: Path) -> Path:
    """GIF over the frames: the frame, then per direction the attention received in the last and over all
    cross-attention layers (head-averaged)."""
    from PIL import Image

    frames, steps, g, scale = exp.frames.numpy(), exp.frames.shape[0], exp.grid, _scale(exp)
    panels = []  # (T, N) heats
    if exp.maps:
        last = max(exp.maps)
        for direction in ("s2t", "t2s"):
            layers = [d[direction] for d in exp.maps.values() if direction in d]
            if not layers:
                continue
            window = exp.windows[direction]
            panels.append(received(exp.maps[last][direction], window, steps) if direction in exp.maps[last]
                          else received(layers[-1], window, steps))
            panels.append(torch.stack([received(m, window, steps) for m in layers]).mean(0))
    images = []
    for t in range(steps):
        row = [overlay(frames[t], np.zeros((g, g)), scale, alpha=0.0)]
        row += [overlay(frames[t], p[t].view(g, g).numpy(), scale, peak=float(p.max())) for p in panels]
        images.append(Image.fromarray(_grid_image([row])))
    path = out / "attention.gif"
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=400, loop=0)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def _png_b64(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _pack(attn: torch.Tensor, window: str, grid: int) -> dict:
    """A layer-direction map for the page: heads plus their mean, uint8 scaled by each head's max, with at
    most MAX_QUERIES_PER_FRAME stored query patches for windows whose rows are per query patch."""
    full = torch.cat([attn.float(), attn.float().mean(0, keepdim=True)])  # (H+1, ...)
    stride = 1
    while (grid // stride) ** 2 > MAX_QUERIES_PER_FRAME and window != "time":
        stride += 1
    queries = [r * grid + c for r in range(0, grid, stride) for c in range(0, grid, stride)]
    if window == "space":  # (H+1, T, N, N) -> stored queries
        full = full[:, :, queries]
    elif window == "spacetime":  # (H+1, T*N, T*N) -> (H+1, T, Q, T*N)
        steps = full.shape[-1] // grid**2
        full = full.view(full.shape[0], steps, grid**2, -1)[:, :, queries]
    peak = full.flatten(1).amax(1).clamp_min(1e-12)  # (H+1,)
    data = (full / peak.view(-1, *[1] * (full.ndim - 1)) * 255).round().to(torch.uint8)
    return {"window": window, "shape": list(data.shape), "peak": peak.tolist(), "queries": queries,
            "data": base64.b64encode(data.numpy().tobytes()).decode()}


def _view_label(exp: Explanation) -> str:
    m = exp.mapping
    if "clips" not in m:
        return ""
    return f"view {exp.view} of {m['clips'] * m['crops']} (clip {m['clip']} of {m['clips']}, crop {m['crop']} " \
           f"of {m['crops']}); the predictions are the mean over all views"


def page_data(exp: Explanation) -> dict:
    scale = _scale(exp)
    frames = [_png_b64(overlay(f, np.zeros((exp.grid, exp.grid)), scale, alpha=0.0)) for f in exp.frames.numpy()]
    return {
        "video": exp.video, "view": _view_label(exp), "grid": exp.grid, "steps": exp.frames.shape[0],
        "heads": exp.heads, "frames": frames,
        "frame_labels": _frame_labels(exp), "top": exp.top, "query": list(default_query(exp)),
        "maps": {str(layer): {d: _pack(m, exp.windows[d], exp.grid) for d, m in dirs.items()}
                 for layer, dirs in exp.maps.items()},
        "relevance": {h: {"target": _class_name(exp, h), **{e: m.tolist() for e, m in r.items()}}
                      for h, r in exp.relevance.items()},
    }


def write_explanation(exp: Explanation, out_dir: str | Path) -> list[Path]:
    """The files of an explanation: maps.safetensors and frames.json hold every view (the maps with their
    leading view axis V, the mapping of each view under "views"); the page, PNGs and GIF draw `exp.view`."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "frames.json", exp.mapping)
    tensors = {f"layer{layer:02d}.{d}": m.contiguous() for layer, dirs in exp.maps.items() for d, m in dirs.items()}
    tensors |= {f"relevance.{h}.{e}": m.contiguous() for h, r in exp.relevance.items() for e, m in r.items()}
    meta = {"windows": json.dumps(exp.windows), "targets": json.dumps(exp.targets), "video": exp.video,
            "shown_view": str(exp.view)}
    blob = save(tensors, metadata=meta)
    atomic_write(out / "maps.safetensors", lambda f: f.write(blob))
    written = [out / "frames.json", out / "maps.safetensors"]
    shown = exp.one_view()
    written += attention_grids(shown, out)
    written += [relevance_grid(shown, out), animation(shown, out)]
    html = PAGE.replace("/*DATA*/null", json.dumps(page_data(shown)))
    atomic_write_text(out / "index.html", html)
    return [out / "index.html", *written]


def attention_figure(model, path: str | Path, names: dict[str, list[str]] | None = None):
    """The serve page's explain view: the last B-CAST layer's head-averaged maps for `default_query`'s token,
    one row per direction, drawn on the frames the model saw (a matplotlib Figure); None without B-CAST."""
    from matplotlib.figure import Figure  # not pyplot: no global registry of figures to leak into

    from .explain import explain_clip

    exp = explain_clip(model, path, names).one_view()
    if not exp.maps:
        return None
    frames, steps, g, scale = exp.frames.numpy(), exp.frames.shape[0], exp.grid, _scale(exp)
    tq, q = default_query(exp)
    layer = max(exp.maps)
    dirs = exp.maps[layer]
    fig = Figure(figsize=(1.6 * steps, 1.9 * len(dirs)))
    axes = fig.subplots(len(dirs), steps, squeeze=False)
    for row, (direction, attn) in zip(axes, dirs.items(), strict=True):
        heat = query_heat(attn.float().mean(0), exp.windows[direction], tq, q, steps).float()  # (T, N)
        for t, ax in enumerate(row):
            ax.imshow(overlay(frames[t], heat[t].view(g, g).numpy(), scale, peak=float(heat.max())))
            ax.set_axis_off()
        row[0].set_title(f"layer {layer} {direction.upper()}, mean of heads", loc="left", fontsize="small")
    return fig
