"""The training engine: exact resume, DDP equivalence, eval outputs (schedule and layer decay: test_optim.py;
metrics by hand: test_metrics.py)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_count_video as write_video

from cast_video.cli import main
from cast_video.config_utils import ConfigError, load_yaml, to_dict
from cast_video.engine import TrainConfig, build_model, train
from cast_video.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


# --- end to end on real files ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ek_data(tmp_path_factory):
    return write_ek_data(tmp_path_factory.mktemp("ek"))


def write_ek_data(root: Path) -> Path:
    """3 real videos and 8 EK100-style training rows (the first 5 also the validation rows)."""
    (root / "P01" / "videos").mkdir(parents=True)
    for v in range(3):
        write_video(root / "P01" / "videos" / f"P01_0{v}.MP4", num_frames=40, size=40, gop=8)
    header = "narration_id,participant_id,video_id,start_frame,stop_frame,verb_class,noun_class\n"
    rows = [f"P01_0{i % 3}_{i},P01,P01_0{i % 3},{1 + i % 5},{24 + i % 9},{i % 8},{(3 * i) % 10}\n" for i in range(8)]
    (root / "train.csv").write_text(header + "".join(rows))
    (root / "val.csv").write_text(header + "".join(rows[:5]))
    return root


def tiny_config(data_root: Path, out: Path, **extra) -> TrainConfig:
    raw = {
        "model": {"preset": "cast_tiny", "overrides": {"drop_path": 0.1}},
        "weights": {"allow_random": True},  # the CLI refuses random frozen experts otherwise
        "data": {"format": "epic_csv", "root": str(data_root), "train": str(data_root / "train.csv"),
                 "num_frames": 8, "input_size": 32, "short_side": 32, "test_clips": 1, "test_crops": 1,
                 "rand_augment": "rand-m7-n2-mstd0.5"},
        "optim": {"epochs": 2, "batch_size": 2, "warmup_epochs": 1, "base_lr": 0.05},
        "output_dir": str(out), "precision": "fp32", "device": "cpu", "num_workers": 0, "save_every_steps": 2,
    }
    for key, value in extra.items():
        node = raw
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return load_yaml(TrainConfig, _write_yaml(out.parent / f"{out.name}.yaml", raw))


def _write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def trainable_state(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


KILLED_RUN = """
import os, signal, sys
import torch
from cast_video.config_utils import load_yaml
from cast_video.engine import TrainConfig, train

update, updates = torch.optim.AdamW.step, []
def step_then_die(self, *args, **kwargs):
    updates.append(1)
    if len(updates) == 8:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: as a crash or a lost node
    return update(self, *args, **kwargs)
torch.optim.AdamW.step = step_then_die
train(load_yaml(TrainConfig, sys.argv[1]), progress=False)
"""


def test_killed_run_resumes_exactly(tmp_path, ek_data):
    full = tmp_path / "full"
    train(tiny_config(ek_data, full, log_every_steps=1), progress=False)
    part = tmp_path / "part"
    config = _write_yaml(tmp_path / "part.yaml", to_dict(tiny_config(ek_data, part, log_every_steps=1)))
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(config)], cwd=ROOT, capture_output=True,
                            timeout=240)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    last = load_checkpoint(part / "checkpoints" / "last.pt")
    assert (last["step"], last["epoch"], last["batch"]) == (6, 1, 2)  # 4 steps per epoch: killed mid-epoch 2
    train(tiny_config(ek_data, part, resume="auto", log_every_steps=1), progress=False)
    a, b = trainable_state(full), trainable_state(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    moved = build_model(tiny_config(ek_data, tmp_path / "fresh"))
    fresh = dict(moved.trainable_parameters())
    assert any(not torch.equal(fresh[k], a[k]) for k in a)  # training really changed the weights
    steps = [r for r in map(json.loads, (full / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert [(r["step"], r["epoch"]) for r in steps] == [(s, (s - 1) // 4) for s in range(1, 9)]
    # the schedule by hand: lr 0.05 x total batch 2 / 256, one warm-up epoch (4 steps) from 1e-6 x 2 / 256,
    # then a cosine to the same floor over the other 4; record `step` s logs the lr its update used (s - 1)
    peak, floor = 0.05 * 2 / 256, 1e-6 * 2 / 256
    by_hand = [floor + (peak - floor) * s / 4 for s in range(4)] + [
        floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert [r["lr"] for r in steps] == pytest.approx(by_hand, rel=1e-9)
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
    assert (full / "config.json").exists()


def _two_processes_equal_one(ek_data, tmp_path, settings: dict, one: dict, two: dict, port: int) -> None:
    """Train `settings` + `one` in this process and `settings` + `two` under torchrun with 2 gloo processes of
    one thread each (`cast-video train`); the trained weights must agree to float tolerance."""
    train(tiny_config(ek_data, tmp_path / "one", **{**settings, **one}), progress=False)
    config = _write_yaml(tmp_path / "two.yaml", to_dict(tiny_config(ek_data, tmp_path / "two", **{**settings, **two})))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                    "-m", "cast_video", "train", str(config), "--no-progress"], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=240)
    a, b = trainable_state(tmp_path / "one"), trainable_state(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, ek_data):
    plain = {"data.rand_augment": "", "data.color_jitter": 0.0, "data.flip": False, "data.mixup": 0.0,
             "data.cutmix": 0.0, "model.overrides": {"drop_path": 0.0}, "optim.epochs": 1,
             "data.val": str(ek_data / "val.csv"), "save_every_steps": 0}
    _two_processes_equal_one(ek_data, tmp_path, plain, {"optim.batch_size": 4}, {"optim.batch_size": 2}, port=29631)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["num_videos"] == 5  # 5 validation videos over 2 ranks, each counted once
    assert metrics == pytest.approx(json.loads((tmp_path / "one" / "metrics.json").read_text()), abs=1e-3)


def test_eval_command_writes_metrics_predictions_submission_and_plots(tmp_path, ek_data):
    cfg = tiny_config(ek_data, tmp_path / "run", **{"optim.epochs": 1, "data.val": str(ek_data / "val.csv")})
    config = _write_yaml(tmp_path / "run.yaml", to_dict(cfg))
    assert main(["train", str(config), "--no-progress"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", str(config), "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.pt"),
                 "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_videos"] == 5 and {"verb/top1", "noun/top1", "action/top1", "harmonic_mean"} <= set(metrics)
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == 5 and abs(sum(preds[0]["verb"]) - 1) < 1e-4
    assert set(json.loads((out / "ek100_submission.json").read_text())["results"]) == {p["id"] for p in preds}
    assert (out / "confusion_verb.png").stat().st_size > 1000 and (out / "f1_noun.png").exists()


def test_grad_checkpointing_is_a_train_config_value(tmp_path, monkeypatch):
    """`model.overrides.grad_checkpointing=true` on the command line reaches the model a run trains."""
    path = _write_yaml(tmp_path / "run.yaml", {"model": {"preset": "cast_tiny"}})
    assert not build_model(load_yaml(TrainConfig, path)).config.grad_checkpointing
    cfg = load_yaml(TrainConfig, path, ["model.overrides.grad_checkpointing=true"])
    model = build_model(cfg).train()
    calls = []
    monkeypatch.setattr("cast_video.models.cast.checkpoint", lambda fn, *a, **k: calls.append(1) or fn(*a))
    model(torch.randn(1, 3, 8, 32, 32))
    assert len(calls) == model.config.depth
    typo = load_yaml(TrainConfig, path, ["model.overrides.grad_checkpoint=true"])  # checked when the model is built
    with pytest.raises(ConfigError, match="grad_checkpoint.*did you mean 'grad_checkpointing'"):
        build_model(typo)


def test_the_backward_options_reach_the_training_step_and_are_logged(tmp_path, ek_data, caplog, monkeypatch):
    """`model.overrides.memory` / `frozen_backward` in a run: the training step carries its gradients
    through the frozen layers in bf16 (the autograd function runs), and the log says what was chosen."""
    from cast_video.models import layers
    calls = []
    apply = layers._LinearInputGradInBf16.apply
    monkeypatch.setattr(layers._LinearInputGradInBf16, "apply", lambda *a: calls.append(1) or apply(*a))
    overrides = {"drop_path": 0.0, "memory": "recompute_bf16", "frozen_backward": "bf16"}
    with caplog.at_level("INFO"):
        train(tiny_config(ek_data, tmp_path / "run", **{"optim.epochs": 1, "model.overrides": overrides}),
              progress=False)
    assert calls  # in training steps; evaluation runs without gradients, where it never applies
    assert "backward: memory recompute_bf16, frozen_backward bf16" in caplog.text


def test_bad_config_keys_are_named(tmp_path):
    path = _write_yaml(tmp_path / "bad.yaml", {"optim": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"optim.epoch.*did you mean 'epochs'"):
        load_yaml(TrainConfig, path)
    assert main(["train", str(path)]) == 2


def test_predict_a_video_a_folder_and_a_timeline(tmp_path, ek_data, capsys):
    names = [f"verb{i}" for i in range(8)]
    (tmp_path / "verbs.txt").write_text("\n".join(names))
    cfg = tiny_config(ek_data, tmp_path / "run", **{"optim.epochs": 1,
                                                     "data.class_names": {"verb": str(tmp_path / "verbs.txt")}})
    train(cfg, progress=False)
    capsys.readouterr()  # the training log, not part of predict's output
    video = ek_data / "P01" / "videos" / "P01_01.MP4"
    assert main(["predict", str(video), "--model", str(tmp_path / "run" / "model"), "--json", "--topk", "3"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in one["verb"]][0] in names and len(one["noun"]) == 3
    assert one["verb"][0]["score"] >= one["verb"][1]["score"] >= one["verb"][2]["score"]
    assert main(["predict", str(video), "--model", str(tmp_path / "run" / "model"), "--json", "--topk", "8"]) == 0
    every = json.loads(capsys.readouterr().out)["verb"]  # all 8 verbs: a distribution, ranked
    assert sorted(r["name"] for r in every) == names and sum(r["score"] for r in every) == pytest.approx(1, abs=1e-4)
    assert every[:3] == one["verb"]
    model_dir = str(tmp_path / "run" / "model")
    assert main(["predict", str(ek_data / "P01"), "--model", model_dir, "--json", "--topk", "3"]) == 0
    many = json.loads(capsys.readouterr().out)
    assert len(many) == 3 and many[1] == one
    assert main(["predict", str(video), "--model", str(tmp_path / "run" / "model"), "--json", "--window", "0.5",
                 "--stride", "0.25"]) == 0
    timeline = json.loads(capsys.readouterr().out)["timeline"]
    # 40 frames at 30 fps: windows of round(0.5 * 30) = 15 frames every round(7.5) = 8 frames
    assert [row["start_s"] for row in timeline] == pytest.approx([0 / 30, 8 / 30, 16 / 30, 24 / 30], abs=1e-3)
    assert all(row["end_s"] - row["start_s"] == pytest.approx(0.5, abs=0.01) for row in timeline)


def test_the_model_follows_the_data_normalisation(tmp_path, ek_data):
    from cast_video.data import DataConfig
    from cast_video.engine.predict import Predictor

    cfg = tiny_config(ek_data, tmp_path / "run", **{"data.norm": "clip"})
    cfg.model.overrides["temporal.norm"] = "imagenet"  # CLIP-normalised input, VideoMAE converts to its own
    model = build_model(cfg)
    assert model.config.input_norm == "clip" and model.temporal.renorm and not model.spatial.renorm
    assert Predictor(model, clips=1, crops=1).data.normalization() == DataConfig(norm="clip").normalization()
    cfg.model.overrides["input_norm"] = "imagenet"
    with pytest.raises(ConfigError, match="data.norm is 'clip'"):
        build_model(cfg)


def test_own_data_with_few_classes_trains_and_mismatched_heads_are_named(tmp_path):
    for name in ["cat", "dog", "fish"]:
        (tmp_path / "own" / name).mkdir(parents=True)
        for i in range(2):
            write_video(tmp_path / "own" / name / f"{i}.mp4", num_frames=24, size=40, gop=8)
    folder = str(tmp_path / "own")
    three = {"model.overrides": {"heads": [{"name": "action", "num_classes": 3, "source": "fused"}]},
             "data.format": "generic", "data.train": folder, "data.val": folder, "optim.epochs": 1,
             "save_every_steps": 0}
    metrics = train(tiny_config(tmp_path, tmp_path / "run", **three), progress=False)
    assert metrics["action/top5"] == 100.0  # top-5 of 3 classes is every class, not an error or a 0
    heads = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["config"]["heads"]
    assert heads[0]["labels"] == ["cat", "dog", "fish"]  # the class names travel with the model
    two = {**three, "model.overrides": {"heads": [{"name": "action", "num_classes": 2, "source": "fused"}]}}
    with pytest.raises(ConfigError, match=r"fish.*action label 2 does not fit the model's action head of 2"):
        train(tiny_config(tmp_path, tmp_path / "two", **two), progress=False)
    with pytest.raises(ConfigError, match="no verb or noun labels"):  # cast_tiny's EK100-style heads
        train(tiny_config(tmp_path, tmp_path / "tiny", **{**three, "model.overrides": {}}), progress=False)


def test_a_missing_video_is_replaced_and_reported(tmp_path, ek_data, caplog):
    rows = (ek_data / "train.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join(rows + ["P01_09_0,P01,P01_09,1,20,0,0"]) + "\n")  # no P01_09.MP4
    cfg = tiny_config(ek_data, tmp_path / "run", **{"optim.epochs": 1, "data.train": str(tmp_path / "train.csv"),
                                                     "optim.batch_size": 3})
    train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("data/unreadable", 0) for r in records) >= 1
    assert "P01_09.MP4" in caplog.text


def test_data_check_lists_counts_and_bad_files(tmp_path, ek_data, capsys):
    rows = (ek_data / "train.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join(rows + ["P01_09_0,P01,P01_09,1,20,0,0"]) + "\n")  # no P01_09.MP4
    cfg = tiny_config(ek_data, tmp_path / "run", **{"data.train": str(tmp_path / "train.csv")})
    config = _write_yaml(tmp_path / "run.yaml", to_dict(cfg))
    assert main(["data", "check", str(config), "--workers", "0", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "9 samples in train, 1 unreadable" in out and "P01_09.MP4" in out
    verbs = [int(r.split(",")[-2]) for r in rows[1:]] + [0]
    assert f"{0:>5} {'':<30} {verbs.count(0):>7}" in out


def test_two_processes_accumulating_equal_one_with_the_same_total_batch(tmp_path, ek_data):
    """2 processes x batch 1 x update_freq 2 = 1 process x batch 4: gradients are all-reduced once, at each
    group's last micro-batch (no_sync before it), so every clip of the group counts once on every rank.
    Syncing at the wrong micro-batch, or never, leaves a micro-batch out of the average or the ranks apart."""
    plain = {"data.rand_augment": "", "data.color_jitter": 0.0, "data.flip": False, "data.mixup": 0.0,
             "data.cutmix": 0.0, "model.overrides": {"drop_path": 0.0}, "optim.epochs": 1, "save_every_steps": 0}
    _two_processes_equal_one(ek_data, tmp_path, plain, {"optim.batch_size": 4},
                             {"optim.batch_size": 1, "optim.update_freq": 2}, port=29637)


def test_two_processes_equal_one_with_augmentation_on(tmp_path, ek_data):
    """Flip, RandAugment, colour jitter, erasing, mixup and cutmix keyed by the sample (data/augment.py):
    2 processes x batch 2 train the weights of 1 process x batch 4 (drop path off: its masks are drawn
    per process)."""
    on = {"data.rand_augment": "rand-m7-n2-mstd0.5", "data.color_jitter_with_rand_augment": True,
          "data.flip": True, "data.random_erasing": 0.5, "data.mixup": 0.8, "data.cutmix": 1.0,
          "data.switch_prob": 0.5, "data.mix_prob": 1.0, "model.overrides": {"drop_path": 0.0},
          "optim.epochs": 1, "save_every_steps": 0}
    _two_processes_equal_one(ek_data, tmp_path, on, {"optim.batch_size": 4}, {"optim.batch_size": 2}, port=29633)
