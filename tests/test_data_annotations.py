"""Annotation formats: K400, SSV2, EPIC-KITCHENS-100, CAST's lists and users' own data, and their errors."""

import json

import pytest

from cast_video.data import AnnotationError, DataConfig, load_annotations
from cast_video.data.annotations import (
    read_cast_epic_list,
    read_epic_classes,
    read_epic_csv,
    read_generic,
    read_kinetics_csv,
    read_path_label_list,
    read_ssv2_json,
)

EPIC_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
               "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
EPIC_ROW = "P01_01_0,P01,P01_01,00:00:01.089,00:00:00.14,00:00:03.37,8,202,open door,open,3,door,8,\"['door']\",[8]\n"


def test_epic_csv_frames_and_timestamps(tmp_path):
    (tmp_path / "train.csv").write_text(EPIC_HEADER + EPIC_ROW)
    (s,) = read_epic_csv(tmp_path / "train.csv", "/data")
    assert (s.path, s.labels, s.id) == ("/data/P01/videos/P01_01.MP4", {"verb": 3, "noun": 8}, "P01_01_0")
    assert (s.start_frame, s.stop_frame) == (7, 201)  # 1-based inclusive -> 0-based inclusive
    (s,) = read_epic_csv(tmp_path / "train.csv", "/data", layout="frames")
    assert s.path == "/data/P01/rgb_frames/P01_01"
    (s,) = read_epic_csv(tmp_path / "train.csv", "/d", video_template="{video_id}.MP4", use_timestamps=True)
    assert s.path == "/d/P01_01.MP4" and (s.start_sec, s.stop_sec) == (0.14, 3.37) and s.stop_frame is None
    test_header = "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,start_frame,stop_frame\n"
    (tmp_path / "test.csv").write_text(test_header + "P01_11_0,P01,P01_11,00:01:02.5,00:01:03,10,20\n")
    (s,) = read_epic_csv(tmp_path / "test.csv", "/d", use_timestamps=True)
    assert s.labels == {} and s.start_sec == pytest.approx(62.5)


@pytest.mark.parametrize("row, message", [
    (EPIC_ROW.replace(",8,202,", ",x,202,"), r"bad.csv:3: start_frame must be an integer, got 'x'"),
    (EPIC_ROW.replace(",8,202,", ",202,8,"), r"bad.csv:3: start_frame=202 stop_frame=8: reversed"),
    (EPIC_ROW.replace(",8,202,", ",0,202,"), r"bad.csv:3: start_frame=0: frames are numbered from 1"),
    (EPIC_ROW.replace(",open,3,", ",open,three,"), r"bad.csv:3: verb_class must be an integer"),
])
def test_epic_csv_errors_name_file_line_and_field(tmp_path, row, message):
    (tmp_path / "bad.csv").write_text(EPIC_HEADER + EPIC_ROW + row)
    with pytest.raises(AnnotationError, match=message):
        read_epic_csv(tmp_path / "bad.csv", "/data")


def test_epic_missing_column_and_class_files(tmp_path):
    (tmp_path / "bad.csv").write_text("narration_id,video_id,start_frame,stop_frame\nP01_01_0,P01_01,1,2\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:1: missing column\(s\) \['participant_id'\]"):
        read_epic_csv(tmp_path / "bad.csv", "/data")
    (tmp_path / "verbs.csv").write_text("id,key,instances,category\n0,take,\"['take']\",retrieve\n1,put,[],leave\n")
    assert read_epic_classes(tmp_path / "verbs.csv") == ["take", "put"]


def test_load_annotations_checks_labels_and_files(tmp_path):
    (tmp_path / "train.csv").write_text(EPIC_HEADER + EPIC_ROW)
    (tmp_path / "verbs.csv").write_text("id,key\n0,take\n1,put\n")
    cfg = DataConfig(format="epic_csv", root=str(tmp_path), train=str(tmp_path / "train.csv"))
    samples, names = load_annotations(cfg, "train")
    assert len(samples) == 1 and names == {}
    cfg.class_names = {"verb": str(tmp_path / "verbs.csv")}
    with pytest.raises(AnnotationError, match=r"train.csv:2: verb label 3 is out of range \(0..1\)"):
        load_annotations(cfg, "train")
    cfg = DataConfig(format="epic_csv", root=str(tmp_path), train=str(tmp_path / "train.csv"), check_files=True)
    with pytest.raises(AnnotationError, match=r"train.csv:2: file .*P01_01.MP4 does not exist"):
        load_annotations(cfg, "train")
    with pytest.raises(AnnotationError, match="does not exist"):
        load_annotations(DataConfig(train=str(tmp_path / "nope.txt")), "train")


def test_kinetics_csv(tmp_path):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,10,20,train\n"
                                    "zumba,xyz,0,10,train\n")
    (tmp_path / "abseiling").mkdir()
    (tmp_path / "abseiling" / "abc_000010_000020.mp4").touch()  # the per-class folder layout is found too
    samples, classes = read_kinetics_csv(tmp_path / "k.csv", str(tmp_path))
    assert classes == ["abseiling", "zumba"]
    assert samples[0].path == str(tmp_path / "abseiling" / "abc_000010_000020.mp4")
    assert samples[1].path == str(tmp_path / "xyz_000000_000010.mp4") and samples[1].labels == {"action": 1}
    (tmp_path / "bad.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,q,9,3,train\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:2: time_start=9, time_end=3"):
        read_kinetics_csv(tmp_path / "bad.csv", "/k")
    with pytest.raises(AnnotationError, match=r"k.csv:3: label: unknown class 'zumba'"):
        read_kinetics_csv(tmp_path / "k.csv", "/k", classes=["abseiling"])


def test_ssv2_json_and_lists(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Holding something": "0", "Pushing something from left to "
                                                      "right": "1"}))
    items = [{"id": "7", "label": "pushing a cup from left to right", "template": "Pushing [something] from left to "
              "right", "placeholders": ["a cup"]}, {"id": "8", "template": "Holding [something]"}]
    (tmp_path / "train.json").write_text(json.dumps(items))
    samples, names = read_ssv2_json(tmp_path / "train.json", tmp_path / "labels.json", "/s")
    assert [s.labels for s in samples] == [{"action": 1}, {"action": 0}] and samples[0].path == "/s/7.webm"
    assert names == ["Holding something", "Pushing something from left to right"]
    (tmp_path / "test.json").write_text(json.dumps([{"id": "9"}]))
    assert read_ssv2_json(tmp_path / "test.json", tmp_path / "labels.json", "/s")[0][0].labels == {}
    (tmp_path / "bad.json").write_text(json.dumps(items + [{"id": "10", "template": "Dropping [something]"}]))
    with pytest.raises(AnnotationError, match=r"bad.json: entry 2 \(id 10\): template: 'Dropping something'"):
        read_ssv2_json(tmp_path / "bad.json", tmp_path / "labels.json", "/s")
    (tmp_path / "list.txt").write_text("38483.mp4 146\nsub dir/a b.mp4 3\nc.mp4 x\n")
    with pytest.raises(AnnotationError, match=r"list.txt:3: label must be an integer"):
        read_path_label_list(tmp_path / "list.txt")
    (tmp_path / "list.txt").write_text("38483.mp4 146\nsub dir/a b.mp4 3\n")
    samples = read_path_label_list(tmp_path / "list.txt", "/r", task="action")
    assert [(s.path, s.labels["action"]) for s in samples] == [("/r/38483.mp4", 146), ("/r/sub dir/a b.mp4", 3)]


def test_cast_precut_list(tmp_path):
    (tmp_path / "train.csv").write_text("P20_01_0,6,0\nP20_01_1,2,11\n")
    samples = read_cast_epic_list(tmp_path / "train.csv", "/e")
    assert [(s.path, s.labels) for s in samples] == [("/e/P20_01_0.mp4", {"verb": 6, "noun": 0}),
                                                     ("/e/P20_01_1.mp4", {"verb": 2, "noun": 11})]
    (tmp_path / "bad.csv").write_text("P20_01_0,6\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:1: expected 'video_id,verb,noun'"):
        read_cast_epic_list(tmp_path / "bad.csv", "/e")


def test_generic_folder_and_csv(tmp_path):
    for c in ("jump", "run"):
        (tmp_path / "own" / c).mkdir(parents=True)
        (tmp_path / "own" / c / "v.mp4").touch()
    samples, classes = read_generic(tmp_path / "own", task="activity")
    assert classes == ["jump", "run"] and [s.labels for s in samples] == [{"activity": 0}, {"activity": 1}]
    (tmp_path / "own.csv").write_text("path,label,start,end\na.mp4,run,1.5,3\nb.mp4,jump,0,2\n")
    samples, classes = read_generic(tmp_path / "own.csv", "/v")
    assert classes == ["jump", "run"] and samples[0].labels == {"action": 1}
    assert (samples[0].path, samples[0].start_sec, samples[0].stop_sec) == ("/v/a.mp4", 1.5, 3.0)
    (tmp_path / "ids.csv").write_text("a.mp4,4\n")
    assert read_generic(tmp_path / "ids.csv")[0][0].labels == {"action": 4}
    (tmp_path / "bad.csv").write_text("a.mp4,run,3,1\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:1: start=3.0, end=1.0"):
        read_generic(tmp_path / "bad.csv")
