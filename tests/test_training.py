"""The training engine's promises: accumulation, exact resume, non-finite losses, safe checkpoints,
multi-view evaluation, the logged schedule, host syncs, and distributed evaluation."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_engine import ROOT, _write_yaml, tiny_config, trainable_state, write_ek_data
from torch.utils._python_dispatch import TorchDispatchMode

from cast_video.cli import main
from cast_video.config_utils import load_yaml, to_dict
from cast_video.data import build_dataset, build_gpu_augment
from cast_video.engine import NonFiniteLoss, TrainConfig, build_model, evaluate, loop, train
from cast_video.engine.checkpoint import CheckpointManager, load_checkpoint
from cast_video.errors import CheckpointError
from cast_video.models import CAST, preset_config
from cast_video.models.experts import ExpertConfig
from cast_video.models.presets import ABLATIONS
from cast_video.pretrain import PretrainConfig, pretrain

PLAIN = {"data.rand_augment": "", "data.color_jitter": 0.0, "data.flip": False, "data.mixup": 0.0,
         "data.cutmix": 0.0, "model.overrides": {"drop_path": 0.0}}


@pytest.fixture(scope="module")
def ek_data(tmp_path_factory):
    return write_ek_data(tmp_path_factory.mktemp("ek"))


def _assert_same_weights(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **(tol or {"rtol": 0, "atol": 0}), msg=k)


# --- accumulation and exact resume -----------------------------------------------------------------
def test_partial_accumulation_groups_step_in_their_epoch_and_resume_is_exact_from_any_checkpoint(
        tmp_path, ek_data, monkeypatch):
    """8 clips, batch 2: 4 micro-batches per epoch; update_freq 3 does not divide them, so each epoch
    has a group of 3 and a partial group of 1 (2 steps per epoch), and nothing leaks across epochs."""
    extra = {"optim.update_freq": 3, "save_every_steps": 1, "keep_last": 10}
    grads_at_epoch_start = []
    epoch = loop.train_epoch

    def watched(state, run):
        grads_at_epoch_start.append([n for n, p in state.model.named_parameters() if p.grad is not None])
        return epoch(state, run)

    monkeypatch.setattr(loop, "train_epoch", watched)
    full = tmp_path / "full"
    train(tiny_config(ek_data, full, **extra), progress=False)
    assert grads_at_epoch_start == [[], []]
    steps = {int(p.stem[5:]): load_checkpoint(p) for p in CheckpointManager(full).step_files()}
    assert sorted(steps) == [1, 2, 3, 4]  # ceil(4 / 3) = 2 steps per epoch
    assert [(steps[s]["epoch"], steps[s]["batch"]) for s in (1, 3)] == [(0, 3), (1, 3)]  # mid-epoch states
    assert (steps[2]["epoch"], steps[2]["batch"]) == (1, 0)  # the end of epoch 1 is the start of epoch 2
    monkeypatch.setattr(loop, "train_epoch", epoch)
    for step in (1, 2):  # mid-epoch (after the full group) and the epoch boundary (after the partial one)
        part = tmp_path / f"from_{step}"
        source = CheckpointManager(full).path(step)
        train(tiny_config(ek_data, part, **extra, resume=str(source)), progress=False)
        _assert_same_weights(trainable_state(full), trainable_state(part))


def test_update_freq_2_of_batch_2_is_batch_4_with_clip_grad(tmp_path, ek_data, monkeypatch):
    """The gradients each step sees (before clipping) and the weights after it, against one batch of 4."""
    seen: dict[str, list] = {}
    clip = torch.nn.utils.clip_grad_norm_

    def record(params, max_norm, *args, **kwargs):
        params = list(params)
        seen.setdefault(record.run, []).append([p.grad.clone() for p in params])
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", record)
    common = {**PLAIN, "optim.epochs": 1, "optim.clip_grad": 0.05, "save_every_steps": 0}
    record.run = "accumulated"
    train(tiny_config(ek_data, tmp_path / "acc", **common, **{"optim.update_freq": 2}), progress=False)
    record.run = "one batch"
    train(tiny_config(ek_data, tmp_path / "big", **common, **{"optim.batch_size": 4}), progress=False)
    assert len(seen["accumulated"]) == len(seen["one batch"]) == 2
    for a, b in zip(seen["accumulated"], seen["one batch"], strict=True):
        for ga, gb in zip(a, b, strict=True):
            torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in seen["one batch"][0]]))
    assert norm > 0.05  # clipping was active
    _assert_same_weights(trainable_state(tmp_path / "acc"), trainable_state(tmp_path / "big"), rtol=1e-4, atol=1e-6)


# --- the schedule as logged and as the optimizer receives it --------------------------------------
def test_logged_lr_follows_the_schedule_by_hand_and_reaches_every_group(tmp_path, ek_data, monkeypatch):
    received = []
    step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        received.append([(g["lr"], g["lr_scale"]) for g in self.param_groups])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    cfg = tiny_config(ek_data, tmp_path / "run", **{**PLAIN, "log_every_steps": 1, "save_every_steps": 0,
                                                   "optim.min_lr": 1e-4, "optim.warmup_lr": 1e-3,
                                                   "optim.layer_decay": 0.5})
    train(cfg, progress=False)
    logged = [r["lr"] for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "lr" in r]
    scale = 2 / 256  # total batch 2
    peak, floor, start = 0.05 * scale, 1e-4 * scale, 1e-3 * scale
    hand = [start + (peak - start) * s / 4 for s in range(4)]  # 4 steps per epoch, warm-up 1 epoch
    hand += [floor + (peak - floor) * (1 + math.cos(math.pi * s / 4)) / 2 for s in range(4)]
    assert logged == pytest.approx(hand, rel=1e-12)
    assert len(received) == 8
    for lr, groups in zip(hand, received, strict=True):
        assert len({scale_ for _, scale_ in groups}) >= 4  # layer decay: blocks 1-4 and the heads differ
        assert all(got == pytest.approx(lr * scale_, rel=1e-12) for got, scale_ in groups)


# --- non-finite losses -----------------------------------------------------------------------------
def test_nonfinite_loss_saves_the_state_from_before_the_failing_step(tmp_path, ek_data, monkeypatch):
    """lr 1e30: step 1 is finite, step 2 is not. The state saved is exactly what a regular checkpoint
    after step 1 holds (weights, optimizer, every RNG: drop path is on), and a regular checkpoint of that
    step is never overwritten."""
    blow_up = {"optim.base_lr": 1e30, "optim.warmup_epochs": 0}
    with pytest.raises(NonFiniteLoss) as err:
        train(tiny_config(ek_data, tmp_path / "nan", **blow_up), progress=False)
    saved = CheckpointManager(tmp_path / "nan").path(1)
    assert str(err.value).startswith("rank 0: loss is ") and f"resume={saved}" in str(err.value)
    assert any(v in str(err.value) for v in ("nan", "inf"))
    assert (tmp_path / "nan" / "checkpoints" / "last.pt").samefile(saved)

    regular, save = {}, CheckpointManager.save

    def keep_a_copy(self, state, step, best=False):
        path = save(self, state, step, best)
        regular.setdefault(step, path.read_bytes())
        return path

    monkeypatch.setattr(CheckpointManager, "save", keep_a_copy)
    with pytest.raises(NonFiniteLoss, match=r"step 2; the state before it \(step 1\)"):
        train(tiny_config(ek_data, tmp_path / "ref", **blow_up, save_every_steps=1), progress=False)
    ref_file = CheckpointManager(tmp_path / "ref").path(1)
    assert ref_file.read_bytes() == regular[1]  # not overwritten
    a, b = load_checkpoint(saved), load_checkpoint(ref_file)
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"]) == (1, 0, 1)
    _assert_same_weights(a["model"], b["model"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["rng"][0]["python"] == b["rng"][0]["python"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        assert all(torch.equal(a["optimizer"]["state"][k][n], b["optimizer"]["state"][k][n]) for n in ("exp_avg",))


def test_nonfinite_loss_is_one_line_from_the_cli(tmp_path, ek_data, capsys):
    cfg = tiny_config(ek_data, tmp_path / "nan", **{"optim.base_lr": 1e30, "optim.warmup_epochs": 0})
    config = _write_yaml(tmp_path / "nan.yaml", to_dict(cfg))
    assert main(["train", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cast-video train: error: rank 0: loss is ") and "Traceback" not in "".join(err)


def test_nonfinite_skip_drops_the_step_counts_it_and_stops_after_too_many(tmp_path, ek_data, monkeypatch):
    loss = loop.ClassificationTask.loss
    poisoned = set()

    def sometimes_nan(self, runner, batch, epoch, micro):
        value = loss(self, runner, batch, epoch, micro)
        return value * float("nan") if (epoch, micro) in poisoned else value

    monkeypatch.setattr(loop.ClassificationTask, "loss", sometimes_nan)
    poisoned.update({(0, 1)})
    cfg = tiny_config(ek_data, tmp_path / "skip", **{**PLAIN, "optim.on_nonfinite": "skip", "optim.epochs": 1,
                                                    "save_every_steps": 0})
    train(cfg, progress=False)
    last = load_checkpoint(tmp_path / "skip" / "checkpoints" / "last.pt")
    assert (last["skipped"], last["step"]) == (1, 4)
    assert len(last["optimizer"]["state"]) and all(s["step"] == 3 for s in last["optimizer"]["state"].values())
    poisoned.update({(0, 0), (0, 2), (0, 3)})
    with pytest.raises(NonFiniteLoss, match="after 2 skipped in a row"):
        train(tiny_config(ek_data, tmp_path / "stop", **{**PLAIN, "optim.on_nonfinite": "skip",
                                                        "optim.max_nonfinite": 2}), progress=False)


# --- checkpoints run no code -----------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))  # loading this object would create `marker`


def test_a_malicious_checkpoint_runs_no_code_through_eval_train_or_pretrain(tmp_path, ek_data, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "step": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(evil)
    cfg = tiny_config(ek_data, tmp_path / "run", **{"data.val": str(ek_data / "val.csv")})
    config = _write_yaml(tmp_path / "run.yaml", to_dict(cfg))
    for command in (["eval", str(config), "--checkpoint", str(evil)], ["train", str(config), f"resume={evil}"]):
        assert main([*command, "--no-progress"]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"cast-video {command[0]}: error: {evil}: ") and "weights_only" in last
    pretrain_dir = tmp_path / "pretrain"
    (pretrain_dir / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "epoch": _Payload(marker)}, pretrain_dir / "checkpoints" / "last.pt")
    pcfg = PretrainConfig(expert=ExpertConfig(arch="videomae", width=32, depth=1, heads=4, patch_size=8), num_frames=4,
                          img_size=16, decoder_width=32, decoder_depth=1, decoder_heads=4,
                          output_dir=str(pretrain_dir), epochs=1, num_workers=0, batch_size=2)
    with pytest.raises(CheckpointError, match="last.pt"):  # resume: auto finds it
        pretrain(pcfg, dataset=list(range(4)), progress=False)
    assert not marker.exists()


# --- evaluation ------------------------------------------------------------------------------------
def test_multi_view_scores_are_the_mean_of_per_view_softmaxes(tmp_path, ek_data):
    """2 clips x 3 crops, evaluation batches of 2: each video's score against each view run alone."""
    cfg = tiny_config(ek_data, tmp_path / "run", **{"data.test_clips": 2, "data.test_crops": 3, "data.short_side": 40,
                                                   "optim.batch_size": 4, "data.val": str(ek_data / "val.csv")})
    torch.manual_seed(1)
    model = build_model(cfg)
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.5 * torch.randn_like(p))  # zero-initialised heads would give flat scores
    metrics, results = evaluate(model, cfg, "val", torch.device("cpu"), progress=False)
    dataset = build_dataset(cfg.data, "val")
    augment = build_gpu_augment(cfg.data, {"verb": 8, "noun": 10}).eval()
    assert metrics["num_videos"] == len(dataset) == 5
    for i in range(len(dataset)):
        views = dataset[i]["video"]  # (6, 3, 2T, S, S)
        assert views.shape[0] == 6
        with torch.no_grad():
            per_view = [model(augment(v[None])[0]) for v in views]
        for head in ("verb", "noun"):
            hand = sum(out[head][0].softmax(-1) for out in per_view) / 6
            torch.testing.assert_close(torch.from_numpy(results["scores"][head][i]), hand, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(per_view[0]["verb"], per_view[5]["verb"])  # the views really differ


def test_print_config_is_the_resolved_config_with_total_batch_and_lr(tmp_path, ek_data, capsys):
    cfg = tiny_config(ek_data, tmp_path / "run")
    config = _write_yaml(tmp_path / "run.yaml", to_dict(cfg))
    assert main(["train", str(config), "optim.update_freq=3", "--print-config"]) == 0
    text = capsys.readouterr().out
    printed = tmp_path / "printed.yaml"
    printed.write_text(text)
    again = load_yaml(TrainConfig, printed)
    assert again.optim.update_freq == 3 and to_dict(again) == {**to_dict(cfg), "optim": to_dict(again.optim)}
    assert "# total batch: 6 = 2 per process x 1 processes x 3 accumulated" in text
    assert f"# peak lr: {0.05 * 6 / 256:.6g}" in text
    assert not (tmp_path / "run").exists()  # nothing trained
    assert yaml.safe_load(text)["optim"]["update_freq"] == 3


# --- two processes ---------------------------------------------------------------------------------
def _torchrun(args: list[str], port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             f"--master_port={port}", "-m", "cast_video", *args], env=env, cwd=ROOT,
                            capture_output=True, timeout=400)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result


def test_two_process_resume_from_mid_epoch_is_exact(tmp_path, ek_data):
    """Drop path and RandAugment on: every rank's RNG must come back. Resumed with 2 processes from a
    mid-epoch checkpoint of epoch 2, the weights are bit-identical to the uninterrupted 2-process run."""
    extra = {"optim.batch_size": 1, "save_every_steps": 1, "keep_last": 10}  # 4 steps per epoch per rank
    full = _write_yaml(tmp_path / "full.yaml", to_dict(tiny_config(ek_data, tmp_path / "full", **extra)))
    _torchrun(["train", str(full), "--no-progress"], 29641)
    source = CheckpointManager(tmp_path / "full").path(6)
    state = load_checkpoint(source)
    assert (state["epoch"], state["batch"], len(state["rng"])) == (1, 2, 2)
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # ranks draw differently
    part = _write_yaml(tmp_path / "part.yaml", to_dict(tiny_config(ek_data, tmp_path / "part", **extra,
                                                                    resume=str(source))))
    _torchrun(["train", str(part), "--no-progress"], 29642)
    _assert_same_weights(trainable_state(tmp_path / "full"), trainable_state(tmp_path / "part"))


def test_eval_under_torchrun_shards_and_writes_once(tmp_path, ek_data, capsys):
    cfg = tiny_config(ek_data, tmp_path / "run", **{"optim.epochs": 1, "data.val": str(ek_data / "val.csv")})
    config = _write_yaml(tmp_path / "run.yaml", to_dict(cfg))
    train(cfg, progress=False)
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert main(["eval", str(config), "--checkpoint", checkpoint, "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    wrote_one = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    result = _torchrun(["eval", str(config), "--checkpoint", checkpoint, "--out", str(tmp_path / "two"),
                        "--no-progress"], 29643)
    wrote = [line for line in result.stdout.decode().splitlines() if line.startswith("wrote ")]
    assert len(wrote_one) > 3 and wrote == [line.replace("/one/", "/two/") for line in wrote_one]  # rank 0 alone
    one, two = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("one", "two"))
    assert [p["id"] for p in two] == [p["id"] for p in one] and len(two) == 5
    for a, b in zip(one, two, strict=True):
        assert a["verb"] == pytest.approx(b["verb"], abs=1e-5)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics == pytest.approx(json.loads((tmp_path / "one" / "metrics.json").read_text()), abs=1e-4)


NAN_ON_RANK_1 = """
import os, sys, time
from cast_video import cli
from cast_video.engine import loop

loss = loop.ClassificationTask.loss
def nan_on_rank_1(self, runner, batch, epoch, micro):
    value = loss(self, runner, batch, epoch, micro)
    return value * float("nan") if int(os.environ["RANK"]) == 1 and micro == 1 else value
loop.ClassificationTask.loss = nan_on_rank_1
close = loop.Run.close
def slow_close_on_rank_0(self):  # rank 0 lags (as when it flushes a big log): torchrun must not cut it short
    time.sleep(3 if int(os.environ["RANK"]) == 0 else 0)
    close(self)
loop.Run.close = slow_close_on_rank_0
sys.exit(cli.main(["train", sys.argv[1], "--no-progress"]))
"""


def test_a_nonfinite_loss_on_one_rank_stops_every_rank_with_its_name(tmp_path, ek_data):
    """Rank 1 alone fails in its second micro-batch: both ranks stop with one line naming rank 1, exit 2,
    and the checkpoint holds the state before that step with both ranks' RNG. Rank 0 is made to lag
    on its way out: torchrun stops every rank once one exits, so each must wait for the others' lines."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    config = _write_yaml(tmp_path / "run.yaml", to_dict(tiny_config(ek_data, tmp_path / "run",
                                                                   **{"optim.batch_size": 1, "save_every_steps": 0})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29644", str(script), str(config)], env=env, cwd=ROOT,
                            capture_output=True, timeout=400)
    assert result.returncode != 0
    saved = CheckpointManager(tmp_path / "run").path(1)
    lines = [line for line in result.stderr.decode().splitlines() if "cast-video train: error:" in line]
    assert len(lines) == 2
    assert all(line.endswith(f"(resume={saved}, e.g. with a lower optim.base_lr)") for line in lines)
    assert all("error: rank 1: loss is nan in epoch 1, step 2;" in line for line in lines)
    state = load_checkpoint(saved)
    assert (state["step"], state["epoch"], state["batch"], len(state["rng"])) == (1, 0, 1, 2)


# --- the hot path ----------------------------------------------------------------------------------
class _HostReads(TorchDispatchMode):
    """Counts device-to-host scalar reads (`.item()`, `bool(tensor)`, ...) while `counting`: each one is a
    sync on a GPU."""

    def __init__(self):
        super().__init__()
        self.count, self.counting = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and self.counting:
            self.count += 1
        return func(*args, **(kwargs or {}))

    def around(self, fn, counting: bool):
        def wrapped(*args, **kwargs):
            before, self.counting = self.counting, counting
            try:
                return fn(*args, **kwargs)
            finally:
                self.counting = before

        return wrapped


def test_training_and_evaluation_read_the_device_at_most_once_per_micro_batch(tmp_path, ek_data, monkeypatch):
    """Counted over every training epoch and evaluation (not the setup: building a model reads scalars
    in `trunc_normal_`), leaving out AdamW's own step counters. The loop reads the loss and finiteness
    once per optimizer step with `.tolist()`, which on a CPU is no `_local_scalar_dense`: so nothing of
    the loop's own is counted here, and an `.item()` per micro-batch would fail the bound."""
    reads = _HostReads()
    micro = []
    loss = loop.ClassificationTask.loss

    def counted(self, *args):
        micro.append(1)
        return loss(self, *args)

    monkeypatch.setattr(loop, "train_epoch", reads.around(loop.train_epoch, True))
    monkeypatch.setattr(loop, "evaluate", reads.around(loop.evaluate, True))
    monkeypatch.setattr(torch.optim.AdamW, "step", reads.around(torch.optim.AdamW.step, False))
    monkeypatch.setattr(loop.ClassificationTask, "loss", counted)
    cfg = tiny_config(ek_data, tmp_path / "run", **{**PLAIN, "optim.update_freq": 2, "log_every_steps": 1,
                                                   "optim.epochs": 1, "data.val": str(ek_data / "val.csv"),
                                                   "save_every_steps": 0})
    with reads:
        train(cfg, progress=False)
    assert len(micro) == 4
    assert reads.count <= len(micro) // 2, reads.count  # the bound: under one read per micro-batch


@pytest.mark.parametrize("ablation", [None, *sorted(ABLATIONS)])
def test_every_trainable_parameter_gets_a_gradient_in_every_ablation(ablation):
    """So DDP can run with find_unused_parameters off: every trainable tensor is in the loss's graph."""
    torch.manual_seed(0)
    model = CAST(preset_config("cast_tiny", ablation=ablation)).train()
    video = torch.randn(2, 3, 8, 32, 32)
    outputs = model(video)
    targets = {h.name: torch.eye(h.num_classes)[:2] for h in model.config.heads}
    sum(loop.soft_cross_entropy(outputs[k], targets[h]) for k, h in model.config.trained_outputs().items()).backward()
    assert [n for n, p in model.trainable_parameters() if p.grad is None] == []


def test_compiled_model_has_no_graph_breaks_and_no_recompiles_across_micro_batches():
    """fullgraph=True fails on any graph break (what `torch._dynamo.explain` would list); a recompile
    across same-shape micro-batches fails through error_on_recompile. One block covers every code path."""
    model = CAST(preset_config("cast_tiny", {"drop_path": 0.1, "spatial.depth": 1, "temporal.depth": 1})).train()
    video = torch.randn(2, 3, 8, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(3):
                sum(v.float().sum() for v in compiled(torch.randn_like(video)).values()).backward()
    finally:
        torch._dynamo.reset()
