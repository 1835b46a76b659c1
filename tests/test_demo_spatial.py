"""demo/spatial.py on the engine: the stage trains exactly as a plain PyTorch loop with torch's own
OneCycleLR and AdamW over the engine sampler's order (the reference), and resumes exactly mid-run."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from cast_video.demo.spatial import StillClassifier, StillDataset, StillPretraining, StillRunConfig, _as_video
from cast_video.engine.config import OptimConfig
from cast_video.engine.distributed import DistInfo, ResumableSampler
from cast_video.engine.loop import train
from cast_video.models.experts import ExpertConfig

EXPERT = ExpertConfig(arch="clip", width=16, depth=2, heads=2, patch_size=8)
IMG = 16


def _stills(n: int = 44, seed: int = 3) -> StillDataset:
    g = torch.Generator().manual_seed(seed)
    return StillDataset(torch.randint(0, 256, (n, IMG, IMG, 3), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (n,), generator=g))


def _cfg(tmp_path, name: str, epochs: int = 3, **kw) -> StillRunConfig:
    optim = OptimConfig(base_lr=2e-3, weight_decay=0.05, layer_decay=1.0, epochs=epochs, warmup_epochs=0.0,
                        batch_size=8)
    return StillRunConfig(EXPERT, IMG, optim, str(tmp_path / name), seed=5, device="cpu", keep_last=100, **kw)


def _reference(data: StillDataset, cfg: StillRunConfig) -> dict[str, torch.Tensor]:
    """The loop the demo had before the engine, with the engine's batches (44 stills of batch 8: 5 batches
    per epoch, 4 stills dropped)."""
    torch.manual_seed(cfg.seed)
    model = StillClassifier(EXPERT, IMG)
    opt = torch.optim.AdamW([{"params": list(model.parameters()), "weight_decay": 0.05}], lr=2e-3)
    sampler = ResumableSampler(len(data), 8, DistInfo(), seed=cfg.seed)
    total = cfg.optim.epochs * sampler.num_batches
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total, pct_start=0.1)
    for epoch in range(cfg.optim.epochs):
        sampler.set_epoch(epoch)
        for idx in torch.tensor(list(sampler)).split(8):
            loss = F.cross_entropy(model(_as_video(data.stills[idx])), data.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    return model.state_dict()


def test_still_pretraining_on_the_engine_equals_a_plain_one_cycle_loop(tmp_path):
    data = _stills()
    cfg = _cfg(tmp_path, "engine")
    got = train(cfg, False, {"train": data}, recipe=StillPretraining())["model"].state_dict()
    want = _reference(data, cfg)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(want["head.weight"], StillClassifier(EXPERT, IMG).head.weight)  # it trained


def test_still_pretraining_resumes_mid_epoch_exactly(tmp_path):
    data = _stills()
    full = train(_cfg(tmp_path, "full", save_every_steps=1), False, {"train": data}, recipe=StillPretraining())
    mid = tmp_path / "full" / "checkpoints" / "step_00000007.pt"  # epoch 2, after 2 of its 5 steps
    shutil.copy(mid, tmp_path / "mid.pt")
    resumed = train(_cfg(tmp_path, "resumed", resume=str(tmp_path / "mid.pt")), False, {"train": data},
                    recipe=StillPretraining())
    written = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").glob("step_*.pt"))
    assert written == ["step_00000010.pt", "step_00000015.pt"]  # went on from step 7, did not start afresh
    for k, v in full["model"].state_dict().items():
        assert torch.equal(resumed["model"].state_dict()[k], v), k
    assert resumed["losses"] == pytest.approx(full["losses"], rel=0, abs=0)
