"""No file a user passes runs code, and every refusal is one line naming the file.

Each hostile file is a pickle whose `__reduce__` creates a marker file when it is unpickled by
anything that calls what a pickle names (`torch.load(weights_only=False)`, `pickle.load`). It is
fed to every API and command that takes a file; the marker must never appear.
"""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cast_video import CAST
from cast_video.cli import main
from cast_video.config_utils import to_dict
from cast_video.demo.config import DemoConfig
from cast_video.errors import CastVideoError, WeightsError
from cast_video.weights import from_pretrained, load_expert, load_experts, load_official_cast, save_pretrained

SRC = Path(__file__).resolve().parents[1] / "src"


class _Payload:
    """Unpickled by anything but an allow-list, it opens (creates) the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def hostile(tmp_path):
    """(marker, {kind: path}) for a zip checkpoint, a legacy checkpoint and a plain pickle."""
    marker = tmp_path / "code-ran"
    weights = {"patch_embed.weight": torch.zeros(4, 3, 4, 4)}
    files = {}
    files["zip"] = tmp_path / "zip.pt"
    torch.save({"model": weights, "args": _Payload(marker)}, files["zip"])
    files["legacy"] = tmp_path / "legacy.pth"
    torch.save({"model": weights, "args": _Payload(marker)}, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"] = tmp_path / "plain.pkl"
    files["pickle"].write_bytes(pickle.dumps({"model": weights, "x": _Payload(marker)}, protocol=4))
    files["disguised"] = tmp_path / "disguised.safetensors"  # a pickle under a safetensors name
    files["disguised"].write_bytes(files["zip"].read_bytes())
    pickle.loads(files["pickle"].read_bytes())  # the payload works: plain unpickling runs it
    assert marker.exists()
    marker.unlink()
    return marker, files


def _one_line_error(capsys, rc: int, command: str, path: Path, log_lines: bool = False) -> str:
    """The error is one line naming `path`; before it, only the library's log lines when `log_lines`."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith(f"cast-video {command}: error: "), err
    assert len(lines) == 1 or log_lines and not any(line.startswith("cast-video") for line in lines[:-1]), err
    assert str(path) in lines[-1], err
    return lines[-1]


def _model_dir(tmp_path: Path, expert_source: Path) -> Path:
    """A saved cast_tiny whose spatial expert is stored by reference to `expert_source`."""
    model = CAST.from_preset("cast_tiny")
    save_pretrained(model, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    meta["experts"] = {"spatial": {"source": str(expert_source), "format": "cast_video"}}
    (tmp_path / "model" / "config.json").write_text(json.dumps(meta))
    return tmp_path / "model"


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle", "disguised"])
def test_apis_refuse_hostile_pickles(tmp_path, hostile, kind):
    marker, files = hostile
    path = files[kind]
    model = CAST.from_preset("cast_tiny")
    calls = [lambda: load_expert(model.spatial, path), lambda: load_experts(model, temporal=path),
             lambda: load_official_cast(path), lambda: from_pretrained(_model_dir(tmp_path, path))]
    for call in calls:
        with pytest.raises(WeightsError) as info:
            call()
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_refusal_names_what_the_pickle_asks_for(hostile):
    marker, files = hostile
    with pytest.raises(WeightsError, match=r"refers to (io|builtins)\.open, which could run code"):
        load_expert(CAST.from_preset("cast_tiny").spatial, files["zip"])
    for kind in ("pickle", "legacy"):
        with pytest.raises(WeightsError, match=r"refers to (io|builtins)\.open"):
            load_expert(CAST.from_preset("cast_tiny").spatial, files[kind])
    assert not marker.exists()


def test_from_pretrained_refuses_a_pickle_named_model_safetensors(tmp_path, hostile):
    marker, files = hostile
    folder = tmp_path / "m"
    save_pretrained(CAST.from_preset("cast_tiny"), folder)
    (folder / "model.safetensors").write_bytes(files["zip"].read_bytes())
    with pytest.raises(WeightsError, match="model.safetensors: not a readable safetensors file"):
        from_pretrained(folder)
    assert not marker.exists()


def _commands(path: Path, tmp_path: Path) -> list[tuple[str, list[str]]]:
    out = str(tmp_path / "out")
    return [
        ("convert", ["convert", "expert", str(path), "--preset", "cast_tiny", "--role", "spatial",
                     "--out", out + ".safetensors"]),
        ("convert", ["convert", "experts", "--preset", "cast_tiny", "--spatial", str(path), "--out", out]),
        ("convert", ["convert", "experts", "--preset", "cast_tiny", "--temporal", str(path), "--out", out]),
        ("convert", ["convert", "official", str(path), "--out", out]),
        ("predict", ["predict", str(tmp_path / "any.mp4"), "--model", str(_model_dir(tmp_path, path))]),
    ]


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_commands_refuse_hostile_pickles(tmp_path, hostile, capsys, kind):
    marker, files = hostile
    for command, argv in _commands(files[kind], tmp_path):
        _one_line_error(capsys, main(argv), command, files[kind])
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.safetensors").exists()


def test_demo_cache_is_read_without_running_code(tmp_path, hostile, capsys):
    """A run folder someone sent (finished data and decode stages, a cache that is a hostile pickle)."""
    marker, files = hostile
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    (run / "cache").mkdir()
    (run / "config.json").write_text(json.dumps(to_dict(DemoConfig())))
    for stage in ("data", "decode"):
        (run / "stages" / f"{stage}.json").write_text(json.dumps({"seconds": 0, "result": {}}))
    for split in ("train", "validation", "test"):
        (run / "cache" / f"{split}.pt").write_bytes(files["zip"].read_bytes())
    line = _one_line_error(capsys, main(["demo", "--run-dir", str(run), "--no-progress"]), "demo",
                           run / "cache" / "train.pt", log_lines=True)  # "[data] reused", ...
    assert ".open, which could run code" in line
    assert not marker.exists()


def test_a_cache_of_tensors_only_is_read(tmp_path):
    from cast_video.demo.pipeline import _read_cache
    from cast_video.errors import DataError

    split = {"clips": torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8), "verb": torch.tensor([0, 1]),
             "noun": torch.tensor([1, 2])}
    torch.save(split, tmp_path / "train.pt")
    assert torch.equal(_read_cache(tmp_path / "train.pt")["clips"], split["clips"])
    torch.save({"clips": [1, 2]}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="bad.pt: not a decoded split"):
        _read_cache(tmp_path / "bad.pt")


def test_refusal_in_a_real_process_is_one_line_on_stderr(tmp_path, hostile):
    """Through the console entry point: stderr carries the one error line and nothing else (no
    traceback, no warning of torch's about the pickle protocol)."""
    marker, files = hostile
    proc = subprocess.run(
        [sys.executable, "-m", "cast_video", "convert", "expert", str(files["pickle"]), "--preset", "cast_tiny",
         "--role", "spatial", "--out", str(tmp_path / "o.safetensors")],
        capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("cast-video convert: error: "), proc.stderr
    assert not marker.exists()


def test_every_refusal_is_a_cast_video_error(hostile):
    _, files = hostile
    for path in files.values():
        with pytest.raises(CastVideoError):
            load_expert(CAST.from_preset("cast_tiny").spatial, path)


def test_eval_checkpoint_refuses_hostile_pickles(tmp_path, hostile, capsys):
    """`cast-video eval --checkpoint FILE`: a training checkpoint someone sent runs no code either."""
    marker, files = hostile
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  preset: cast_tiny\ndata:\n  val: never-read.csv\n")  # refused before any data
    for kind in ("zip", "legacy", "pickle"):
        line = _one_line_error(capsys, main(["eval", str(config), "--checkpoint", str(files[kind])]), "eval",
                               files[kind], log_lines=True)
        assert ".open, which could run code" in line
    assert not marker.exists()
