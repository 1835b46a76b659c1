"""The benchmark command and the speed options it measures: same numbers, whatever the setting."""

import json

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cast_video import CAST
from cast_video.cli import main
from cast_video.models.counting import count_gmacs
from cast_video.models.presets import preset_config


def _model():
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny")
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_math_attention_gives_the_sdpa_outputs():
    model = _model().eval()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        fast = model(video)
        with sdpa_kernel(SDPBackend.MATH):
            slow = model(video)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-5)


def test_grad_checkpointing_gives_the_same_gradients():
    video = torch.randn(2, 3, 8, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model = _model().train()  # cast_tiny has no drop path: both runs are deterministic
        model.grad_checkpointing = checkpointing
        out = model(video)
        (out["verb"].square().sum() + out["noun"].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.trainable_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6, msg=n)


def test_benchmark_command_reports_every_figure(capsys):
    assert main(["benchmark", "cast_tiny", "--mode", "train", "--batch", "2", "--steps", "1", "--warmup", "0",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["mode"] == "train" and row["batch"] == 2 and row["ms_per_step"] > 0
    assert abs(row["clips_per_s"] - 2000 / row["ms_per_step"]) < 0.01 * row["clips_per_s"]
    assert row["gmacs_per_view"] == round(count_gmacs(preset_config("cast_tiny")), 2)
    assert row["peak_memory_gb"] > 0 and row["mfu"] is None  # no GPU: no MFU
    assert main(["benchmark", "cast_tiny", "--attention", "math", "--steps", "1", "--warmup", "0"]) == 0
    assert "clips/s" in capsys.readouterr().out
