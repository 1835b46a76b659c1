"""VideoMAE pre-training: exact tube masking, the normalised-pixel target, learning, resuming, loading into CAST."""

import numpy as np
import pytest
import torch

from cast_video.cli import main
from cast_video.config_utils import ConfigError, load_yaml
from cast_video.data import DataConfig
from cast_video.models import CAST, preset_config
from cast_video.models.experts import ExpertConfig
from cast_video.pretrain import (
    MaskedVideoAutoencoder,
    PretrainConfig,
    load_expert_state,
    pretrain,
    sample_tube_mask,
    tube_mask,
)


def tiny_cfg(tmp_path, **kw) -> PretrainConfig:
    base = dict(expert=ExpertConfig(arch="videomae", width=32, depth=2, heads=4, patch_size=8), num_frames=8,
                img_size=32, decoder_width=32, decoder_depth=1, decoder_heads=4, epochs=2, warmup_epochs=0,
                batch_size=8, lr=0.05, num_workers=0, output_dir=str(tmp_path / "run"),
                data=DataConfig(format="unlabeled", flip=False))
    base.update(kw)
    return PretrainConfig(**base)


@pytest.mark.parametrize("n, ratio, masked", [(16, 0.9, 14), (196, 0.9, 176), (100, 0.29, 29), (64, 0.75, 48)])
def test_tube_mask_masks_exactly_floor_ratio_per_clip(n, ratio, masked):
    mask = tube_mask(64, n, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (64, n) and mask.dtype == torch.bool
    assert (mask.sum(1) == masked).all()
    assert len({tuple(row.tolist()) for row in mask}) > 1  # a fresh mask per clip


def test_encoder_sees_only_visible_tubes_in_every_frame():
    """Changing the pixels of a masked patch in all frames leaves the encoder unchanged; a visible one does not."""
    cfg = PretrainConfig(expert=ExpertConfig(arch="videomae", width=32, depth=2, heads=4, patch_size=8),
                         num_frames=8, img_size=32, decoder_width=32, decoder_depth=1, decoder_heads=4)
    model = MaskedVideoAutoencoder(cfg).eval()
    captured = []
    model.encoder.blocks[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    mask = tube_mask(1, 16, 0.75, torch.Generator().manual_seed(1))
    video = torch.randn(1, 3, 8, 32, 32)
    masked_idx = int(mask[0].nonzero()[0])
    visible_idx = int((~mask[0]).nonzero()[0])

    def poke(idx):
        v = video.clone()
        r, c = divmod(idx, 4)
        v[..., r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 5.0  # the patch in every frame
        return v

    with torch.no_grad():
        for v in (video, poke(masked_idx), poke(visible_idx)):
            model(v, mask)
    assert torch.equal(captured[0], captured[1])
    assert not torch.allclose(captured[0], captured[2])


def test_zero_prediction_costs_the_normalised_target_energy():
    """With per-patch normalisation (unbiased variance over n pixels per channel) each target token has
    mean square (n-1)/n, so a model predicting zeros has exactly that loss."""
    cfg = PretrainConfig(expert=ExpertConfig(arch="videomae", width=32, depth=1, heads=4, patch_size=8),
                         num_frames=4, img_size=16, decoder_width=32, decoder_depth=1, decoder_heads=4)
    model = MaskedVideoAutoencoder(cfg)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    n = 2 * 8 * 8
    loss = model(torch.rand(3, 3, 4, 16, 16), tube_mask(3, 4, 0.5))
    assert loss.item() == pytest.approx((n - 1) / n, rel=1e-4)


def _moving_dataset(count: int):
    from cast_video.demo.clips import ClipDataset
    from cast_video.demo.synth import VERBS, SynthConfig, load_digit_images, render_clip

    images, _ = load_digit_images()
    rng = np.random.default_rng(0)
    clips = np.stack([render_clip(images[i], VERBS[i % 8], rng, SynthConfig(noise=0.0)) for i in range(count)])
    labels = torch.zeros(count, dtype=torch.long)
    return ClipDataset({"clips": torch.from_numpy(clips).permute(0, 4, 1, 2, 3), "verb": labels, "noun": labels})


def test_loss_decreases_and_a_run_resumes(tmp_path):
    data = _moving_dataset(32)
    first = pretrain(tiny_cfg(tmp_path, epochs=2, lr=0.2), dataset=data, progress=False)
    resumed = pretrain(tiny_cfg(tmp_path, epochs=6, lr=0.2), dataset=data, progress=False)
    assert resumed["loss"][:2] == first["loss"]  # the first two epochs were not redone
    assert len(resumed["loss"]) == 6
    loss = np.array(resumed["loss"])
    assert (np.diff(loss) < 0).all()  # every epoch improves (about 1.00 -> 0.987: most of the target is noise)
    assert loss[-1] < loss[0] - 0.01


def test_expert_weights_load_into_cast_unchanged(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=1)
    out = pretrain(cfg, dataset=_moving_dataset(8), progress=False)
    model_cfg = preset_config("cast_tiny", {"spatial.width": 32, "temporal.width": 32, "spatial.depth": 2,
                                            "temporal.depth": 2})
    model = CAST(model_cfg)
    state = load_expert_state(out["expert"])
    model.temporal.load_state_dict(state)  # strict: every name matches
    for name, tensor in model.temporal.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("expert: {arch: clip}\n")
    with pytest.raises(ConfigError, match="expert.arch"):
        load_yaml(PretrainConfig, path)
    path.write_text("mask_ratoi: 0.9\n")
    with pytest.raises(ConfigError, match="mask_ratio"):
        load_yaml(PretrainConfig, path)


def test_cli_pretrains_on_a_folder_of_videos(tmp_path, capsys):
    from cast_video.demo.synth import SynthConfig, write_moving_digits

    write_moving_digits(tmp_path / "d", SynthConfig(), {"train": 8, "validation": 1, "test": 1}, seed=0,
                        progress=False)
    rc = main(["pretrain", "configs/demo/pretrain.yaml", "--no-progress", "--set",
               f"data.train={tmp_path / 'd' / 'videos' / 'P01'}", f"output_dir={tmp_path / 'run'}",
               "epochs=1", "warmup_epochs=0", "batch_size=4", "num_workers=0"])
    assert rc == 0
    assert (tmp_path / "run" / "expert.safetensors").exists()
    assert "temporal expert" in capsys.readouterr().out


def test_grad_checkpointing_in_pretraining_gives_the_same_gradients(tmp_path):
    """`grad_checkpointing: true` in a pretrain config: same gradients, fewer activations kept for backward."""
    video = torch.randn(2, 3, 8, 32, 32)
    mask = tube_mask(2, 16, 0.5, torch.Generator().manual_seed(0))
    grads, kept = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = MaskedVideoAutoencoder(tiny_cfg(tmp_path, grad_checkpointing=checkpointing)).train()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t.numel()) or t, lambda t: t):
            model(video, mask).backward()
        kept.append(sum(saved))
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6, msg=n)
    assert kept[1] < 0.7 * kept[0]


# --- on the engine: two processes, exact resume, precision -----------------------------------------
def _expert(run_dir) -> dict[str, torch.Tensor]:
    return load_expert_state(run_dir / "expert.safetensors")


def test_sample_tube_masks_are_keyed_by_epoch_and_index():
    """The mask of a clip depends on (seed, epoch, index) only: not on its batch neighbours or position."""
    a = sample_tube_mask(torch.tensor([3, 5, 7]), epoch=1, seed=0, num_patches=16, ratio=0.75)
    b = sample_tube_mask(torch.tensor([7, 3]), epoch=1, seed=0, num_patches=16, ratio=0.75)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert (a.sum(1) == 12).all()
    assert not torch.equal(a[0], sample_tube_mask(torch.tensor([3]), epoch=2, seed=0, num_patches=16, ratio=0.75)[0])


def test_two_processes_pretrain_as_one_with_the_same_global_batch(tmp_path):
    """torchrun (gloo) with 2 processes of batch 2 gives the weights of 1 process of batch 4: masks and
    crops are keyed per clip, DDP averages the gradients of equal-sized shards."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from cast_video.config_utils import to_dict
    from cast_video.demo.synth import SynthConfig, write_moving_digits

    root = Path(__file__).resolve().parents[1]
    write_moving_digits(tmp_path / "d", SynthConfig(), {"train": 9, "validation": 1, "test": 1}, seed=0, progress=False)
    data = DataConfig(format="unlabeled", train=str(tmp_path / "d" / "videos" / "P01"), sampling="segment", flip=False)
    one = tiny_cfg(tmp_path, data=data, batch_size=4, output_dir=str(tmp_path / "one"), lr=0.2)
    pretrain(one, progress=False)
    two = tiny_cfg(tmp_path, data=data, batch_size=2, output_dir=str(tmp_path / "two"), lr=0.2)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(to_dict(two)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_port=29651", "-m", "cast_video", "pretrain", str(tmp_path / "two.yaml"),
                             "--no-progress"], env=env, cwd=root, capture_output=True, timeout=400)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    a, b = _expert(tmp_path / "one"), _expert(tmp_path / "two")
    fresh = MaskedVideoAutoencoder(one).encoder.state_dict()  # seed 0's initial weights
    assert any(not torch.allclose(a[k], fresh[k]) for k in a)  # training moved them
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and len(state["rng"]) == 2  # 9 clips: 2 steps of 4 per epoch (the 9th dropped)


def test_resumed_pretraining_is_bit_identical(tmp_path):
    """Stopped mid-epoch 2 (a step checkpoint) and resumed from it: the same weights, bit for bit."""
    data = _moving_dataset(16)  # 4 steps per epoch
    extra = dict(epochs=2, batch_size=4, save_every_steps=1, keep_last=10)
    full = pretrain(tiny_cfg(tmp_path, output_dir=str(tmp_path / "full"), **extra), dataset=data, progress=False)
    source = tmp_path / "full" / "checkpoints" / "step_00000006.pt"
    state = torch.load(source, weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 2)
    part = pretrain(tiny_cfg(tmp_path, output_dir=str(tmp_path / "part"), resume=str(source), **extra), dataset=data,
                    progress=False)
    a, b = _expert(tmp_path / "full"), _expert(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert part["loss"] == full["loss"] and len(full["loss"]) == 2


def test_precision_auto_is_resolved_and_its_autocast_entered(tmp_path, monkeypatch):
    """`precision: auto` goes through the precision rule; the answer (bf16 here) is the autocast every
    forward runs under, and the resolved value is what the checkpoint records."""
    import cast_video.pretrain as pt

    asked = []

    def rule(requested, device, model_config=None):
        asked.append((requested, torch.device(device).type))
        return "bf16", "test"

    monkeypatch.setattr(pt, "resolve_precision", rule)
    seen = []
    original = MaskedVideoAutoencoder.forward

    def forward(self, video, mask):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(self, video, mask)

    monkeypatch.setattr(MaskedVideoAutoencoder, "forward", forward)
    cfg = tiny_cfg(tmp_path, epochs=1, batch_size=4, device="cpu", precision="auto")
    result = pretrain(cfg, dataset=_moving_dataset(8), progress=False)
    assert asked == [("auto", "cpu")]
    assert seen == [(True, torch.bfloat16)] * 2
    assert np.isfinite(result["loss"]).all()
    assert torch.load(result["checkpoint"], weights_only=True)["config"]["precision"] == "bf16"
