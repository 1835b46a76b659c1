"""The dataset on real files: decoded frames are the ones the sampling asked for, bad files never stop it."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import COUNT_STEP, full_decode, write_count_video
from PIL import Image
from torch.utils.data import DataLoader

from cast_video.data import DataConfig, VideoReadError, build_dataset, collate
from cast_video.data.dataset import _resize, decode_threads
from cast_video.data.dataset import test_crops as make_test_crops


def clip_ids(video: torch.Tensor) -> list[int]:
    """Frame indices encoded in a uint8 clip (3, T, H, W) of a counting video (centre, off the corner)."""
    h = video.shape[-1]
    return [round(v) for v in (video[:, :, h // 2:, h // 2:].float().mean((0, 2, 3)) / COUNT_STEP).tolist()]


@pytest.fixture()
def epic_dir(tmp_path, count_video):
    (tmp_path / "P01" / "videos").mkdir(parents=True)
    (tmp_path / "P01" / "videos" / "P01_01.MP4").write_bytes(count_video.read_bytes())
    header = "narration_id,participant_id,video_id,start_frame,stop_frame,verb_class,noun_class\n"
    rows = "".join(f"P01_01_{i},P01,P01_01,{1 + 10 * i},{32 + 10 * i},{i % 3},{i % 2}\n" for i in range(3))
    (tmp_path / "train.csv").write_text(header + rows)
    broken = rows + "P01_02_0,P01,P01_02,1,10,0,0\n"  # P01_02.MP4 does not exist
    (tmp_path / "val.csv").write_text(header + broken)
    return tmp_path


def epic_cfg(epic_dir, **kw):
    base = dict(format="epic_csv", root=str(epic_dir), train=str(epic_dir / "train.csv"),
                val=str(epic_dir / "val.csv"), num_frames=8, input_size=16, short_side=16, test_clips=2)
    return DataConfig(**{**base, **kw})


def test_epic_training_clip_takes_one_frame_per_segment(epic_dir):
    train = build_dataset(epic_cfg(epic_dir), "train")
    item = train[1]  # frames 10..41 (0-based), 8 segments of 4
    assert item["video"].shape == (3, 8, 16, 16) and item["video"].dtype == torch.uint8
    assert item["labels"] == {"verb": 1, "noun": 1} and item["id"] == "P01_01_1" and item["skipped"] == []
    assert all(10 + 4 * k <= i < 10 + 4 * (k + 1) for k, i in enumerate(clip_ids(item["video"])))
    assert train[1]["video"].equal(item["video"])  # deterministic for (seed, epoch, index)
    train.set_epoch(1)
    assert not train[1]["video"].equal(item["video"])


@pytest.mark.parametrize("sampling", ["segment", "official_segment"])
def test_the_sampling_option_picks_the_rule(tmp_path, count_video, sampling):
    """A whole 60-frame video, 8 frames: the official rule draws from segments of 7 frames over frames
    0..55; ours from segments of 7.5 frames over all 60."""
    (tmp_path / "a.mp4").write_bytes(count_video.read_bytes())
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    ds = build_dataset(DataConfig(root=str(tmp_path), train=str(tmp_path / "list.txt"), num_frames=8, input_size=16,
                                  sampling=sampling), "train")
    last = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        ids = clip_ids(ds[0]["video"])
        width = 7 if sampling == "official_segment" else 7.5
        assert all(int(width * k) <= i < width * (k + 1) for k, i in enumerate(ids)), ids
        last.add(ids[-1])
    assert (max(last) >= 56) == (sampling == "segment")


def test_epic_multiview_test_clips_are_segment_starts_and_centres(epic_dir):
    val = build_dataset(epic_cfg(epic_dir), "val")
    video = val[0]["video"]  # frames 0..31, segments of 4
    assert video.shape == (6, 3, 8, 16, 16)  # 2 clips x 3 crops, clip-major
    assert clip_ids(video[0]) == list(range(0, 32, 4)) and clip_ids(video[3]) == list(range(2, 32, 4))
    batch = collate([val[0], val[1]])
    assert batch["video"].shape == (2, 6, 3, 8, 16, 16) and batch["labels"]["verb"].tolist() == [0, 1]


def test_epic_frame_folders_give_the_same_frames_as_the_video(epic_dir, count_video):
    frames = full_decode(count_video)
    folder = epic_dir / "P01" / "rgb_frames" / "P01_01"
    folder.mkdir(parents=True)
    for i, f in enumerate(frames, 1):
        Image.fromarray(f).save(folder / f"frame_{i:010d}.jpg", quality=100)
    from_frames = build_dataset(epic_cfg(epic_dir, layout="frames"), "val")[1]["video"]
    from_video = build_dataset(epic_cfg(epic_dir), "val")[1]["video"]
    assert clip_ids(from_frames[0]) == clip_ids(from_video[0]) == list(range(10, 42, 4))
    assert (from_frames.float() - from_video.float()).abs().mean() < 2  # JPEG at quality 100


def test_k400_dense_sampling_on_real_videos(tmp_path):
    path = write_count_video(tmp_path / "abc_000010_000020.mp4", num_frames=50)
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,train\n")
    cfg = DataConfig(format="k400_csv", root=str(tmp_path), train=str(tmp_path / "k.csv"), val=str(tmp_path / "k.csv"),
                     sampling="dense", num_frames=8, frame_stride=4, input_size=16, short_side=16, test_clips=3,
                     test_crops=1)
    assert path.exists()
    ids = clip_ids(build_dataset(cfg, "train")[0]["video"])
    assert np.all(np.diff(ids) == 4) and 0 <= ids[0] <= 50 - 29
    video = build_dataset(cfg, "val")[0]["video"]
    assert video.shape == (3, 3, 8, 16, 16)
    assert [clip_ids(v)[0] for v in video] == [0, 10, 21]  # room 50 - 29 = 21, spread over 3 views
    short = DataConfig(**{**cfg.__dict__, "frame_stride": 8})  # 57-frame window in a 50-frame video
    ds = build_dataset(short, "val")
    assert clip_ids(ds[0]["video"][0])[-1] == 49 and ds.stats["short_clips"] == 1 and ds[0]["short"]


def test_generic_csv_segments_in_seconds_use_the_videos_fps(tmp_path):
    write_count_video(tmp_path / "a.mp4", num_frames=60, fps=20)  # 3 s
    (tmp_path / "own.csv").write_text("path,label,start,end\na.mp4,run,1.0,2.0\n")  # frames 20..39
    own = str(tmp_path / "own.csv")
    cfg = DataConfig(format="generic", root=str(tmp_path), train=own, val=own,
                     num_frames=4, input_size=16, short_side=16, test_clips=1, test_crops=1)
    assert clip_ids(build_dataset(cfg, "val")[0]["video"][0]) == [20, 25, 30, 35]


def test_unreadable_videos_are_replaced_reported_and_counted(epic_dir, tmp_path, caplog):
    cut = epic_dir / "P01" / "videos" / "P01_03.MP4"
    cut.write_bytes((epic_dir / "P01" / "videos" / "P01_01.MP4").read_bytes()[:3000])
    with open(epic_dir / "val.csv", "a") as f:
        f.write("P01_03_0,P01,P01_03,1,10,0,0\n")
    val = build_dataset(epic_cfg(epic_dir), "val")
    first, again = val[3], val[3]
    assert first["index"] == again["index"] < 3 and first["video"].equal(again["video"])  # deterministic
    assert first["video"].shape == (6, 3, 8, 16, 16)
    assert "P01_02.MP4: no such file" in first["skipped"][0] and "P01_02.MP4" in caplog.text
    assert all("P01_02" in s or "P01_03" in s for s in first["skipped"])
    fourth = val[4]
    assert fourth["index"] < 3 and "P01_03.MP4" in fourth["skipped"][0]
    assert val.stats["unreadable"] == 2 * len(first["skipped"]) + len(fourth["skipped"])
    batch = collate([val[0], first, fourth])
    assert batch["skipped"] == first["skipped"] + fourth["skipped"]
    with pytest.raises(VideoReadError, match="P01_02.MP4"):
        build_dataset(epic_cfg(epic_dir, on_bad_video="raise"), "val")[3]


def expected_replacements(index: int, bad: set[int], n: int, seed: int, epoch: int) -> tuple[list[int], int]:
    """The documented rule, by hand: after the k-th failure in a row, the replacement is the failing
    position + 1 + a draw in [0, n - 2] of default_rng((seed, epoch, index, k)), modulo n, which is
    never the failing position."""
    failed, current = [], index
    while current in bad:
        failed.append(current)
        draw = int(np.random.default_rng((seed, epoch, index, len(failed))).integers(n - 1))
        current = (current + 1 + draw) % n
    return failed, current


def test_bad_video_replacement_sequence_for_a_fixed_seed(tmp_path, count_video):
    """7 entries, 4 of them missing files: the files each sample tried, in order, and the one it returns
    are those of the rule, for several seeds and epochs; a failing position never replaces itself."""
    n, bad = 7, {1, 2, 4, 5}
    for i in range(n):
        if i not in bad:
            (tmp_path / f"v{i}.mp4").write_bytes(count_video.read_bytes())
    (tmp_path / "list.txt").write_text("".join(f"v{i}.mp4 {i}\n" for i in range(n)))
    cfg = DataConfig(root=str(tmp_path), train=str(tmp_path / "list.txt"), num_frames=4, input_size=16, max_failures=50)
    chains = set()
    for seed in (0, 3):
        ds = build_dataset(cfg, "train", seed=seed)
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            for index in sorted(bad):
                item = ds[index]
                failed, final = expected_replacements(index, bad, n, seed, epoch)
                assert [s.split(":")[0] for s in item["skipped"]] == [str(tmp_path / f"v{i}.mp4") for i in failed]
                assert item["index"] == final and item["labels"] == {"action": final} and final not in bad
                assert all(a != b for a, b in zip(failed, [*failed[1:], final], strict=True))  # never by itself
                chains.add(tuple(failed))
    assert len(chains) > 4 and any(len(c) > 1 for c in chains)  # the draws vary; some chains fail twice


def test_too_many_failures_in_a_row_stop(tmp_path):
    (tmp_path / "list.txt").write_text("".join(f"missing{i}.mp4 0\n" for i in range(5)))
    ds = build_dataset(DataConfig(root=str(tmp_path), train=str(tmp_path / "list.txt"), max_failures=3), "train")
    with pytest.raises(VideoReadError, match="4 unreadable videos in a row"):
        ds[0]


def test_worker_processes_report_bad_files_and_do_not_hang(epic_dir):
    val = build_dataset(epic_cfg(epic_dir), "val")
    loader = DataLoader(val, batch_size=2, num_workers=2, collate_fn=collate, timeout=60)
    batches = list(loader)
    assert sum(len(b["video"]) for b in batches) == 4
    assert sum(len(b["skipped"]) for b in batches) == 1


def test_repeated_augmentation(epic_dir):
    ds = build_dataset(epic_cfg(epic_dir, num_sample=2), "train")
    item = ds[0]
    assert item["video"].shape == (2, 3, 8, 16, 16) and not item["video"][0].equal(item["video"][1])
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (4, 3, 8, 16, 16) and batch["labels"]["verb"].tolist() == [0, 0, 1, 1]


def test_test_crops_cover_the_long_side():
    frames = torch.zeros(2, 20, 40, 3, dtype=torch.uint8)
    frames[:, :, :, 0] = torch.arange(40, dtype=torch.uint8) * 6  # red grows along the width
    crops = make_test_crops(frames, short_side=10, crop=10, num_crops=3)  # resized to 10x20
    assert [c.shape for c in crops] == [(3, 2, 10, 10)] * 3
    left, centre, right = (c[0].float().mean().item() for c in crops)
    assert left < centre < right
    assert make_test_crops(frames, 10, 10, 1)[0].equal(crops[1])


@pytest.mark.parametrize("src, dst", [((90, 160), (32, 32)), ((37, 23), (16, 16)), ((12, 20), (30, 40))])
def test_uint8_resize_matches_the_float_resize(src, dst):
    """The worker resizes uint8 frames with PyTorch's uint8 kernel; the float resize of the same frames,
    rounded, differs by at most one grey level (downscaling with antialias, and upscaling)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, *src, 3), generator=g, dtype=torch.uint8)  # (T, H, W, 3) as decoded
    out = _resize(frames, dst)
    assert out.shape == (3, 3, *dst) and out.dtype == torch.uint8  # (3, T, h, w)
    ref = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=dst, mode="bilinear", antialias=True,
                        align_corners=False).round().clamp(0, 255).permute(1, 0, 2, 3)
    assert (out.float() - ref).abs().max() <= 1 and (out.float() - ref).abs().mean() < 0.5


def test_decoder_threads_split_the_cores_between_workers_and_ranks(monkeypatch, epic_dir):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert decode_threads() == cores and decode_threads(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores + 1))
    assert decode_threads() == 1  # never 0: FFmpeg would take every core
    monkeypatch.setattr("cast_video.data.dataset.get_worker_info", lambda: type("W", (), {"num_workers": 2})())
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert decode_threads() == max(1, cores // 2)
    ds = build_dataset(epic_cfg(epic_dir), "train")
    ds[0]
    assert ds.video_backend.threads == max(1, cores // 2)  # set on the first read in this process
