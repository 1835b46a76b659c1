"""Every supported expert pairing trains on the engine and resumes exactly.

For each pairing, two tiny transformers checkpoints are built offline and saved; a run config names
them (`model.from_experts: true`, `weights.spatial` / `weights.temporal`), so the architectures come
from their config.json files and the frozen weights from their files. A run stopped at a mid-epoch
checkpoint and resumed from it ends with the same trainable weights and the same optimizer state, bit
for bit, as the run that was never stopped (augmentation and drop path on, so the RNG states count).
"""

import pytest
import torch
from test_engine import tiny_config, write_ek_data
from test_experts import _dinov2, _randomise, _siglip, _videomae, _vjepa2, _write_preprocessor
from test_videomae_v2 import _hf as _videomae_v2
from test_videomae_v2 import write_hub_folder
from transformers import CLIPVisionConfig, CLIPVisionModel

from cast_video.engine import build_model, train
from cast_video.engine.checkpoint import CheckpointManager, load_checkpoint


@pytest.fixture(scope="module")
def ek_data(tmp_path_factory):
    return write_ek_data(tmp_path_factory.mktemp("ek"))


def _clip():
    return _randomise(CLIPVisionModel(CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                       patch_size=8, intermediate_size=48, image_size=32)))


def _spatial(name, folder):
    build = {"siglip2": _siglip, "dinov2": _dinov2, "dinov2_registers": lambda: _dinov2(registers=2),
             "clip": _clip}[name]
    build().save_pretrained(folder)
    if name == "siglip2":
        _write_preprocessor(folder, "siglip")


def _temporal(name, folder):
    if name == "videomae":
        _videomae(folder)
    elif name == "vjepa2":
        _vjepa2().save_pretrained(folder)
    else:
        write_hub_folder(folder, _videomae_v2())


# SigLIP 2, DINOv2 and DINOv2 with registers with VideoMAE; CLIP (transformers' CLIPVisionModel) with
# V-JEPA 2 (DINOv2 + V-JEPA 2 is the same spatial code path as DINOv2 + VideoMAE); VideoMAE V2 (the hub's
# layout) as the temporal expert.
PAIRS = [("siglip2", "videomae"), ("dinov2", "videomae"), ("dinov2_registers", "videomae"), ("clip", "vjepa2"),
         ("siglip2", "videomae_v2")]


def _same(a, b, where=""):
    """Equal, bit for bit, through nested dicts and lists of tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("spatial, temporal", PAIRS, ids=[f"{s}+{t}" for s, t in PAIRS])
def test_a_pairing_trains_and_resumes_bit_identically(tmp_path, ek_data, spatial, temporal):
    _spatial(spatial, tmp_path / "s")
    _temporal(temporal, tmp_path / "t")
    extra = {"model.from_experts": True, "weights.spatial": str(tmp_path / "s"),
             "weights.temporal": str(tmp_path / "t"), "weights.allow_random": False, "optim.epochs": 1,
             "optim.warmup_epochs": 0, "save_every_steps": 3, "data.rand_augment": ""}  # flip, jitter, mixup and
    # drop path stay on
    full = tmp_path / "full"
    cfg = tiny_config(ek_data, full, **extra)
    train(cfg, progress=False)
    end = load_checkpoint(full / "checkpoints" / "last.pt")
    assert end["step"] == 4  # 8 clips in batches of 2
    fresh = build_model(cfg)
    arch = {"siglip2": "siglip", "dinov2_registers": "dinov2", "videomae_v2": "videomae"}
    assert (fresh.config.spatial.arch, fresh.config.temporal.arch) == (arch.get(spatial, spatial),
                                                                        arch.get(temporal, temporal))
    assert fresh.expert_sources["temporal"]["source"] == str((tmp_path / "t").resolve())
    start = dict(fresh.trainable_parameters())
    assert all(torch.isfinite(v).all() for v in end["model"].values())
    assert any(not torch.equal(start[k], v) for k, v in end["model"].items())  # the steps moved the weights
    source = CheckpointManager(full).path(3)
    mid = load_checkpoint(source)
    assert (mid["epoch"], mid["batch"]) == (0, 3)  # mid-epoch: 3 of its 4 batches done
    part = tmp_path / "part"
    train(tiny_config(ek_data, part, **extra, resume=str(source)), progress=False)
    resumed = load_checkpoint(part / "checkpoints" / "last.pt")
    assert resumed["step"] == end["step"]
    _same(end["model"], resumed["model"], "model")
    _same(end["optimizer"], resumed["optimizer"], "optimizer")
