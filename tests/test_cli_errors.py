"""Bad input to any command: one line on stderr naming the file or key, exit status 2, no traceback."""

import json

import pytest
import torch
from safetensors.torch import save_file

from cast_video import CAST
from cast_video.cli import main, one_line
from cast_video.weights import save_pretrained


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    save_file({"foo": torch.zeros(2)}, d / "unknown.safetensors")
    torch.save({"foo": torch.zeros(2)}, d / "unknown.pt")
    (d / "garbage.safetensors").write_bytes(b"hello world, not a header")
    (d / "notes.txt").write_text("not a checkpoint\n")
    run = d / "runs" / "exp1"  # a folder of runs: the model sits in runs/exp1/model (a run folder stands for its model)
    save_pretrained(CAST.from_preset("cast_tiny"), run / "model")
    (d / "broken").mkdir()
    (d / "broken" / "config.json").write_text("{not json")
    (d / "foreign").mkdir()
    (d / "foreign" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    (d / "train.yaml").write_text("model:\n  preset: cast_tiny\ndata:\n  root: .\n")
    return d


def _cases(d):
    expert = ["convert", "expert", "--preset", "cast_tiny", "--role", "spatial", "--out", str(d / "o.safetensors")]
    return [
        (expert + [str(d / "unknown.safetensors")], "unknown.safetensors: unrecognised checkpoint format"),
        (expert + [str(d / "unknown.pt")], "unknown.pt: unrecognised checkpoint format"),
        (expert + [str(d / "garbage.safetensors")], "garbage.safetensors: not a readable safetensors file"),
        (expert + [str(d / "notes.txt")], "notes.txt: not a checkpoint that can be read safely"),
        (expert + [str(d / "missing.pt")], "missing.pt: no such file or directory"),
        (["convert", "official", str(d / "unknown.pt"), "--out", str(d / "o")], "unknown.pt: unrecognised"),
        (["convert", "experts", "--preset", "cast_tiny", "--set", "img_size=30", "--out", str(d / "o")],
         "image size 30 is not divisible by its patch size"),
        (["predict", "v.mp4", "--model", str(d / "nowhere")], "nowhere: no such file or directory"),
        (["predict", "v.mp4", "--model", str(d / "runs")], f"{d / 'runs' / 'exp1' / 'model'} holds one; pass that"),
        (["predict", "v.mp4", "--model", str(d / "notes.txt")], "notes.txt: a model is a folder"),
        (["predict", "v.mp4", "--model", str(d / "broken")], "config.json: not a readable JSON file"),
        (["predict", "v.mp4", "--model", str(d / "foreign")], "config.json: not written by cast-video"),
        (["benchmark", "cast_tiny", "--batch", "0"], "batch must be positive"),
        (["benchmark", "cast_tiny", "--steps", "0"], "need steps >= 1"),
        (["data", "check", str(d / "train.yaml")], "data.train: no annotation file given"),
    ]


@pytest.mark.parametrize("case", range(15))
def test_bad_input_is_one_line_and_exit_2(files, capsys, case):
    cases = _cases(files)
    assert len(cases) == 15
    argv, expected = cases[case]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cast-video {argv[0]}: error: "), err
    assert expected in lines[0], err


def test_one_line_keeps_every_part_of_a_multi_line_message():
    assert one_line(ValueError("a.pt: bad\n  first\n\n  second\n")) == "a.pt: bad; first; second"
