"""Your own videos through the CLI alone: classes from folders, the hold-out split, `--init`, run folders
that describe themselves and travel, the refusals and errors before any work, and the README's commands."""

import json
import re
import shlex
import shutil
import stat
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_count_video

from cast_video.cli import build_parser, main
from cast_video.config_utils import ConfigError, load_yaml
from cast_video.data import load_annotations
from cast_video.data.annotations import Sample
from cast_video.data.folders import holdout, scan_data, write_splits
from cast_video.engine import TrainConfig, build_model
from cast_video.engine.autoconfig import check_shapes, load_train_config, own_data_config
from cast_video.errors import DataError
from cast_video.models import CAST, preset_config
from cast_video.weights import from_pretrained, load_experts, save_pretrained

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["jump", "run", "wave"]


def make_class_folders(root: Path, classes=CLASSES, clips: int = 8, frames: int = 20) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(1, clips + 1):
            write_count_video(root / c / f"clip{i:03d}.mp4", num_frames=frames, size=32)
    return root


def readme_block() -> list[str]:
    """The first bash block of the README's 'Train on your own videos' section, one command per line."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Train on your own videos"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def run_cli(line: str) -> int:
    argv = shlex.split(line)
    assert argv[0] == "cast-video"
    return main(argv[1:])


# --- the README walk-through, exactly ---------------------------------------------------------
def test_the_readme_commands_train_evaluate_and_predict_with_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_class_folders(tmp_path / "my_videos", clips=4)
    commands = readme_block()
    assert [shlex.split(c)[1] for c in commands] == ["data", "train", "eval", "predict"]
    outputs = []
    for line in commands:
        assert run_cli(line) == 0, line
        captured = capsys.readouterr()
        outputs.append(captured.out + captured.err)  # the library's log (one line per epoch) is on stderr
    check, trained, evaluated, predicted = outputs
    assert "9 samples in train, 0 unreadable" in check and "3 samples in val" in check and "jump" in check
    assert "data.num_frames = 8: the frames preset cast_tiny takes" in trained
    assert "optim.warmup_epochs = 0.2: 10% of the 2 epochs" in trained
    assert [line for line in trained.splitlines() if line.startswith("epoch 2/2: loss ")]  # one line per epoch
    run = tmp_path / "runs" / "my_videos"
    assert f"cast-video eval {run}" in trained and f"cast-video predict VIDEO --model {run}" in trained
    assert re.search(r"best epoch [12] of 2 \(checkpoints/best.pt\): action/top1", trained)
    for name in ["config.yaml", "classes.txt", "train.csv", "val.csv", "checkpoints/best.pt", "model/config.json",
                 "log.jsonl", "metrics.json", "eval_val/predictions.json"]:
        assert (run / name).exists(), name
    assert all(f"  {c} " in evaluated for c in CLASSES)  # per-class lines by name
    rows = json.loads((run / "eval_val" / "predictions.json").read_text())
    assert sorted(r["action_label_name"] for r in rows) == CLASSES  # one held-out clip per class
    assert all(r["action_predicted"] in CLASSES for r in rows)
    top = re.search(r"action: (\w+) ", predicted).group(1)
    assert top in CLASSES
    assert json.loads((run / "model" / "config.json").read_text())["config"]["heads"][0]["labels"] == CLASSES

    # the run continues from its own config.yaml, from any working directory
    monkeypatch.chdir(tmp_path / "my_videos")
    assert main(["train", str(run / "config.yaml"), "resume=auto", "optim.epochs=3", "--no-progress"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "resumed from" in out and "epoch 3/3: loss" in out and "epoch 2/3" not in out
    # ... but the same folder is never trained into afresh without --overwrite
    assert main(["train", str(run / "config.yaml")]) == 2
    assert "already holds a run" in capsys.readouterr().err

    # model/ travels: copied elsewhere, with the run and the data gone, it predicts the same, with names
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(run / "model", moved)
    video = tmp_path / "probe.mp4"
    shutil.copy(tmp_path / "my_videos" / "jump" / "clip001.mp4", video)
    assert main(["predict", str(video), "--model", str(run), "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(tmp_path / "my_videos")
    assert main(["predict", str(video), "--model", str(moved), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == before
    assert str(tmp_path) not in (moved / "config.json").read_text()  # no path of this machine inside
    for f in moved.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


# --- classes and layouts -------------------------------------------------------------------------
def test_classes_are_the_sorted_folders_and_other_files_are_skipped(tmp_path):
    root = make_class_folders(tmp_path / "data", ["b_walk", "a_sit"], clips=2)
    (root / "a_sit" / "notes.txt").write_text("not a video")
    (root / "a_sit" / ".DS_Store").write_text("")
    frames = root / "b_walk" / "frames01"
    frames.mkdir()
    for i in range(1, 9):
        (frames / f"img_{i:05d}.jpg").write_bytes(b"")  # a frame folder counts as a clip
    data = scan_data(root)
    assert data.classes == ["a_sit", "b_walk"] and data.layout == "class folders"
    by_class = {}
    for s in data.splits["train"]:
        by_class.setdefault(data.classes[s.labels["action"]], []).append(Path(s.path).name)
    assert by_class == {"a_sit": ["clip001.mp4", "clip002.mp4"], "b_walk": ["clip001.mp4", "clip002.mp4",
                                                                              "frames01"]}
    assert data.skipped == [str(root / "a_sit" / "notes.txt")]


def test_split_folders_keep_the_training_class_ids(tmp_path):
    make_class_folders(tmp_path / "d" / "train", ["cat", "dog", "eel"], clips=2)
    make_class_folders(tmp_path / "d" / "val", ["dog", "eel"], clips=1)  # a val split without every class
    data = scan_data(tmp_path / "d")
    assert data.layout == "split folders" and data.classes == ["cat", "dog", "eel"]
    assert sorted(s.labels["action"] for s in data.splits["val"]) == [1, 2]  # dog, eel: the train ids
    make_class_folders(tmp_path / "d" / "val", ["fox"], clips=1)
    with pytest.raises(DataError, match=r"val/fox.*not a class folder of the training split"):
        scan_data(tmp_path / "d")


def test_an_annotation_file_gives_the_classes(tmp_path):
    make_class_folders(tmp_path / "v", ["x", "y"], clips=2)
    (tmp_path / "v" / "list.csv").write_text("path,label\nx/clip001.mp4,open\nx/clip002.mp4,open\n"
                                            "y/clip001.mp4,close\ny/clip002.mp4,close\n")
    data = scan_data(tmp_path / "v" / "list.csv")
    assert data.layout == "annotation file" and data.classes == ["close", "open"]
    assert [(Path(s.path).parent.name, s.labels["action"]) for s in data.splits["train"]] == \
        [("x", 1), ("x", 1), ("y", 0), ("y", 0)]
    assert all(Path(s.path).exists() for s in data.splits["train"])


# --- the hold-out split --------------------------------------------------------------------------
def _samples(counts: list[int]) -> list[Sample]:
    return [Sample(f"/v/{c}/{i}.mp4", {"action": c}, id=f"{c}/{i}", where=f"/v/{c}/{i}.mp4")
            for c, n in enumerate(counts) for i in range(n)]


def test_holdout_is_stratified_at_least_one_per_class_and_seeded(tmp_path):
    samples = _samples([7, 2, 23, 10])
    train, val = holdout(samples, 0.1, seed=0)
    per_class = [sum(s.labels["action"] == c for s in val) for c in range(4)]
    assert per_class == [1, 1, 2, 1]  # round(0.7) -> 1, 2 clips -> 1 (never all), round(2.3) = 2, round(1.0) = 1
    assert {s.id for s in train} | {s.id for s in val} == {s.id for s in samples}
    assert not {s.id for s in train} & {s.id for s in val}
    assert [s.id for s in holdout(samples, 0.1, seed=0)[1]] == [s.id for s in val]  # reproducible
    assert [s.id for s in holdout(samples, 0.1, seed=1)[1]] != [s.id for s in val]
    assert [sum(s.labels["action"] == c for s in holdout(samples, 0.5, 0)[1]) for c in range(4)] == [4, 1, 12, 5]
    with pytest.raises(DataError, match=r"/v/1/0.mp4: the only clip of its class"):
        holdout(_samples([3, 1]), 0.1, seed=0)


def test_written_splits_read_back_through_the_generic_format(tmp_path):
    samples = _samples([3, 4])
    train, val = holdout(samples, 0.3, seed=0)
    paths = write_splits({"train": train, "val": val}, ["sit, down", "stand"], tmp_path)
    cfg = TrainConfig().data
    cfg.format, cfg.train, cfg.val = "generic", str(paths["train"]), str(paths["val"])
    cfg.class_names = {"action": str(paths["classes"])}
    back, names = load_annotations(cfg, "val")
    assert names == {"action": ["sit, down", "stand"]}  # a comma in a class name survives
    assert [(s.path, s.labels) for s in back] == [(s.path, s.labels) for s in val]


# --- errors before any work ----------------------------------------------------------------------
def test_class_folders_without_readable_videos_or_with_one_class_are_named(tmp_path):
    root = make_class_folders(tmp_path / "a", ["good", "bad"], clips=1)
    (root / "bad" / "clip001.mp4").write_bytes(b"this is not an mp4 file at all" * 10)
    with pytest.raises(DataError, match=r"a/bad: none of its 1 videos can be read"):
        scan_data(root)
    (root / "bad" / "clip001.mp4").unlink()
    (root / "bad" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"a/bad: no video files .* or frame folders"):
        scan_data(root)
    shutil.rmtree(root / "bad")
    with pytest.raises(DataError, match=r"only one class \('good'\)"):
        scan_data(root)


def test_the_cli_refuses_random_frozen_experts_and_a_batch_larger_than_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_class_folders(tmp_path / "clips", ["a", "b"], clips=3)
    assert main(["train", "--data", "clips", "--preset", "cast_tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "experts would stay random" in err and "weights.allow_random=true" in err
    assert "--spatial ViT-B-16.pt" in err and "freeze_experts=false" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    assert main(["train", "--data", "clips", "--preset", "cast_tiny", "weights.allow_random=true",
                 "optim.batch_size=5"]) == 2
    err = capsys.readouterr().err
    assert "4 training clips, fewer than one step needs (optim.batch_size 5" in err and "at most 4" in err
    assert not (tmp_path / "runs").exists()


def test_predict_at_a_folder_without_a_model_names_the_folder_that_has_one(tmp_path, capsys):
    model = CAST(preset_config("cast_tiny"))
    save_pretrained(model, tmp_path / "runs" / "exp1" / "model")
    video = write_count_video(tmp_path / "v.mp4")
    assert main(["predict", str(video), "--model", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'runs' / 'exp1' / 'model'} holds one" in err and len(err.strip().splitlines()) == 1
    assert main(["predict", str(video), "--model", str(tmp_path / "runs" / "exp1")]) == 0  # a run folder works


# --- --init with other classes -------------------------------------------------------------------
def _own_config(init: str, classes: list[str]) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.overrides = {"heads": [{"name": "action", "num_classes": len(classes), "labels": classes}]}
    cfg.weights.init = init
    return cfg


def test_init_keeps_bcast_and_adapters_and_recreates_a_head_whose_classes_differ(tmp_path, caplog):
    torch.manual_seed(1)
    three = CAST(preset_config("cast_tiny", {"heads": [{"name": "action", "num_classes": 3, "labels": CLASSES}]}))
    for p in three.parameters():  # far from any fresh initialisation
        p.data.uniform_(-1, 1)
    save_pretrained(three, tmp_path / "three")
    init_state = three.state_dict()
    with caplog.at_level("WARNING"):
        two = build_model(_own_config(str(tmp_path / "three"), ["sit", "stand"]))
    assert "head 'action' re-created for 2 classes (the model's has 3 classes)" in caplog.text
    state = two.state_dict()
    assert state["heads.action.weight"].shape[0] == 2
    assert not torch.equal(state["heads.action.bias"], init_state["heads.action.bias"][:2])
    kept = [k for k in state if not k.startswith("heads.")]
    assert any(".exchange." in k for k in kept) and any("adapter" in k for k in kept)
    for k in kept:
        torch.testing.assert_close(state[k], init_state[k], rtol=0, atol=0, msg=k)
    caplog.clear()
    same = build_model(_own_config(str(tmp_path / "three"), CLASSES))  # same classes: the head is kept too
    torch.testing.assert_close(same.state_dict()["heads.action.weight"], init_state["heads.action.weight"])
    renamed = build_model(_own_config(str(tmp_path / "three"), ["x", "y", "z"]))  # same count, other classes
    assert "3 classes with other names" in caplog.text
    assert not torch.equal(renamed.state_dict()["heads.action.weight"], init_state["heads.action.weight"])


def test_init_takes_the_architecture_of_the_saved_model(tmp_path):
    saved = CAST(preset_config("cast_tiny", {"heads": [{"name": "action", "num_classes": 3}], "bcast_ratio": 0.25}))
    save_pretrained(saved, tmp_path / "m")
    make_class_folders(tmp_path / "d", ["a", "b"], clips=2)
    plan = own_data_config(scan_data(tmp_path / "d"), init=str(tmp_path / "m"))
    model = preset_config(plan.config.model.preset, plan.config.model.overrides)
    assert model.bcast_ratio == 0.25 and model.spatial.width == 64 and model.heads[0].labels == ["a", "b"]
    assert plan.config.data.num_frames == 8 and plan.config.data.input_size == 32


# --- defaults that follow the data and the preset ------------------------------------------------
def test_small_data_defaults_follow_the_overrides_they_depend_on(tmp_path):
    make_class_folders(tmp_path / "d", ["a", "b", "c"], clips=4, frames=10)
    data = scan_data(tmp_path / "d")
    plan = own_data_config(data, preset="cast_tiny")
    o = plan.config.optim
    assert len(plan.splits["train"]) == 9 and len(plan.splits["val"]) == 3
    assert o.batch_size == 2  # 9 clips // 4 steps
    assert o.epochs == 50 and o.warmup_epochs == 5.0  # 4 steps per epoch: 300 steps capped at 50 epochs
    assert o.base_lr * o.batch_size / 256 == pytest.approx(1e-3 * (2 / 256) ** 0.5, rel=1e-3)  # sqrt rule peak
    short = own_data_config(data, preset="cast_tiny", overrides=["optim.epochs=5", "optim.batch_size=3"])
    assert short.config.optim.warmup_epochs == 0.5  # warm-up scales with the run the user asked for
    assert short.config.optim.base_lr * 3 / 256 == pytest.approx(1e-3 * (3 / 256) ** 0.5, rel=1e-3)
    assert any(c.key == "optim.epochs" and c.reason == "set on the command line" for c in short.choices)
    default = own_data_config(data)
    assert default.config.model.preset == "cast_b16_k400" and default.config.data.num_frames == 16
    head = default.config.model.overrides["heads"][0]
    assert head == {"name": "action", "num_classes": 3, "source": "fused", "labels": ["a", "b", "c"]}


def test_data_sizes_follow_the_preset_unless_set_and_a_mismatch_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "cast_tiny"}}))
    cfg = load_train_config(path)
    assert (cfg.data.num_frames, cfg.data.input_size, cfg.data.short_side) == (8, 32, 32)
    path.write_text(yaml.safe_dump({"model": {"preset": "cast_tiny"}, "data": {"num_frames": 16}}))
    cfg = load_train_config(path)
    with pytest.raises(ConfigError, match="data.num_frames is 16 but the model takes 8 frames"):
        check_shapes(cfg, preset_config("cast_tiny"))
    cfg = load_train_config(path, ["model.overrides.num_frames=16"])
    check_shapes(cfg, preset_config("cast_tiny", cfg.model.overrides))
    with pytest.raises(ConfigError, match="data.input_size is 48 but the model takes 32 px"):
        check_shapes(load_train_config(path, ["data.num_frames=8", "data.input_size=48"]), preset_config("cast_tiny"))


# --- overrides and help --------------------------------------------------------------------------
def test_a_nested_override_merges_into_the_yaml_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    heads = [{"name": "action", "num_classes": 5}]
    path.write_text(yaml.safe_dump({"model": {"preset": "cast_tiny", "overrides": {"heads": heads}}}))
    cfg = load_yaml(TrainConfig, path, ["model.overrides.freeze_experts=false", "model.overrides.spatial.heads=2"])
    assert cfg.model.overrides == {"heads": heads, "freeze_experts": False, "spatial.heads": 2}
    model = preset_config("cast_tiny", cfg.model.overrides)
    assert model.heads[0].num_classes == 5 and not model.freeze_experts and model.spatial.heads == 2
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.epoch' \(did you mean 'epochs'"):
        load_yaml(TrainConfig, path, ["optim.epoch=3"])
    with pytest.raises(ConfigError, match=r"'seed.x'"):
        load_yaml(TrainConfig, path, ["seed.x=3"])


def test_an_override_that_is_not_yaml_is_the_string_as_typed(tmp_path):
    """`{participant_id}/{video_id}.mp4` is not YAML (a flow mapping followed by text): a string field takes
    it as typed; a field of another type still refuses it, naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "cast_tiny"}}))
    cfg = load_yaml(TrainConfig, path, ["data.video_template={participant_id}/{video_id}.mp4"])
    assert cfg.data.video_template == "{participant_id}/{video_id}.mp4"
    with pytest.raises(ConfigError, match=r"optim.epochs: expected"):
        load_yaml(TrainConfig, path, ["optim.epochs={3}/x"])


def test_overrides_go_anywhere_on_the_command_line():
    from cast_video.cli import _parse

    args = _parse(build_parser(), ["eval", "runs/x", "a=1", "--checkpoint", "c.pt", "optim.batch_size=2",
                                   "--no-progress"])
    assert args.overrides == ["a=1", "optim.batch_size=2"] and args.checkpoint == "c.pt"
    with pytest.raises(SystemExit):
        _parse(build_parser(), ["eval", "runs/x", "--checkpoint", "c.pt", "stray"])
    with pytest.raises(SystemExit):
        _parse(build_parser(), ["info", "cast_tiny", "--json", "x=1"])  # info takes --set, not overrides


def test_help_is_written_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "cast_video.commands" not in out and "train --data my_videos" in out and "predict clip.mp4" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--data DIR" in capsys.readouterr().out


def test_the_demo_names_its_classes():
    from cast_video.demo.clips import ClipDataset

    empty = {"clips": torch.zeros(0), "verb": torch.zeros(0), "noun": torch.zeros(0)}
    names = ClipDataset(empty).class_names
    assert "move left" in names["verb"] and len(names["verb"]) == 8
    assert names["noun"] == [str(d) for d in range(10)]


def test_pyproject_license_is_an_spdx_string():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_an_exported_model_carries_experts_read_from_local_files(tmp_path):
    from safetensors.torch import save_file

    from cast_video.engine.rundir import export_model

    torch.manual_seed(0)
    donor = CAST(preset_config("cast_tiny"))
    save_file({k: v.contiguous() for k, v in donor.spatial.state_dict().items()}, str(tmp_path / "spatial.safetensors"))
    model = CAST(preset_config("cast_tiny"))
    load_experts(model, spatial=str(tmp_path / "spatial.safetensors"))
    assert model.expert_sources["spatial"]["source"] == str(tmp_path / "spatial.safetensors")
    export_model(model, tmp_path / "model", {"verb": [f"v{i}" for i in range(8)], "noun": ["too", "few"]})
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["experts"] == {} and str(tmp_path) not in json.dumps(meta)
    assert meta["config"]["heads"][0]["labels"] == [f"v{i}" for i in range(8)]
    assert meta["config"]["heads"][1]["labels"] == []  # 2 names for 10 classes: none rather than wrong ones
    (tmp_path / "spatial.safetensors").unlink()  # the source is gone; the folder still has every weight
    shutil.move(tmp_path / "model", tmp_path / "moved")
    back = from_pretrained(tmp_path / "moved")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_frame_folders_are_clips_for_predict_features_and_pretraining(tmp_path):
    """What `data prepare --frames jpg` writes (a folder of JPEGs per video) is found as one clip by
    predict, features and pre-training, beside videos; a folder with neither is an error naming it,
    not an empty result (predict used to print nothing and exit 0)."""
    from PIL import Image

    from cast_video.data.annotations import read_unlabeled
    from cast_video.engine.features import collect_inputs
    from cast_video.engine.predict import find_videos

    root = tmp_path / "clips"
    frames = root / "a" / "clip1"
    frames.mkdir(parents=True)
    for i in range(1, 5):
        Image.new("RGB", (8, 8)).save(frames / f"frame_{i:010d}.jpg")
    (root / "b").mkdir()
    video = write_count_video(root / "b" / "v.mp4", 4)
    (root / "b" / "notes.txt").write_text("not a clip")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert find_videos(root) == [frames, video]
    assert find_videos(frames) == [frames]
    assert [Path(p) for p, *_ in collect_inputs([str(root)])] == [frames, video]
    assert [Path(s.path) for s in read_unlabeled(root)] == [frames, video]
    with pytest.raises(DataError, match=r"empty: no video files .* or frame folders under this folder"):
        find_videos(tmp_path / "empty")
