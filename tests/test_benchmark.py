"""The benchmark command, its harness and the speed options it measures: same numbers, whatever the
setting. No timings are asserted: speed goes to docs/benchmarks.md."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from cast_video import CAST
from cast_video.benchmark import bf16_peak_tflops, count_step_gflops, measure
from cast_video.cli import main
from cast_video.models.counting import count_gmacs
from cast_video.models.presets import preset_config

LINUX_PEAK_RESET = Path("/proc/self/clear_refs").exists()


def _model(**overrides):
    """cast_tiny with every activation kept in fp32 (memory "full": tests/test_memory.py covers the others)."""
    torch.manual_seed(0)
    model = CAST.from_preset("cast_tiny", **{"memory": "full", **overrides})
    with torch.no_grad():  # adapters and exchange up-projections start at zero: make them count
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _grads(model, video, seed=0):
    torch.manual_seed(seed)
    out = model(video)
    (out["verb"].square().sum() + out["noun"].sum()).backward()
    return {n: p.grad.clone() for n, p in model.trainable_parameters()}


def test_math_attention_gives_the_sdpa_outputs_and_gradients():
    model = _model()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        fast = model.eval()(video)
        with sdpa_kernel(SDPBackend.MATH):
            slow = model(video)
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-5, atol=1e-5)
    model.train()
    fast = _grads(model, video)
    model.zero_grad()
    with sdpa_kernel(SDPBackend.MATH):
        slow = _grads(model, video)
    for n in fast:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_grad_checkpointing_gives_the_same_gradients(drop_path):
    """`grad_checkpointing` is a config value (`model.overrides.grad_checkpointing=true` in a run): the
    same gradients, with drop path too (the recomputation replays the same random masks, as checkpoint
    keeps the RNG state), and far fewer activations kept for backward (so it really is on)."""
    video = torch.randn(2, 3, 8, 32, 32)
    grads, kept = [], []
    for checkpointing in (False, True):
        model = _model(drop_path=drop_path, grad_checkpointing=checkpointing).train()
        assert model.config.grad_checkpointing is checkpointing
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, s=saved: s.append(t.numel()) or t, lambda t: t):
            grads.append(_grads(model, video, seed=1))
        kept.append(sum(saved))
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6, msg=n)
    assert kept[1] < 0.5 * kept[0]


def test_step_flops_follow_from_the_forward_count():
    """Inference is one forward (2 FLOPs per MAC of the paper's count). A training step adds the
    backward: activation gradients everywhere (about one forward) but weight gradients only for the
    trainable parameters, so frozen experts put it between 2x and 3x; training everything makes it ~3x."""
    cfg = preset_config("cast_tiny")
    forward = count_step_gflops(cfg, "infer", 1)
    assert forward == pytest.approx(2 * count_gmacs(cfg), rel=1e-6)
    assert count_step_gflops(cfg, "infer", 3) == pytest.approx(3 * forward, rel=1e-6)
    frozen = count_step_gflops(cfg, "train", 1) / forward
    assert 2.0 < frozen < 2.9
    everything = count_step_gflops(preset_config("cast_tiny", {"freeze_experts": False}), "train", 1) / forward
    assert 2.9 < everything <= 3.0


class _Allocates(nn.Module):
    """Touches `mb` megabytes inside forward, then frees them."""

    def __init__(self, mb: int):
        super().__init__()
        self.n = mb * 2**20 // 4
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return {"out": x * self.w + torch.ones(self.n).sum()}


def _rss_gb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 2**20


@pytest.mark.skipif(not LINUX_PEAK_RESET, reason="needs /proc/self/clear_refs")
def test_peak_memory_is_the_peak_of_the_measured_run():
    x = torch.ones(4)
    big = measure(_Allocates(400), x, steps=1, warmup=0)
    assert big.memory_kind == "peak RSS of this run (VmHWM reset)"
    assert big.peak_memory_gb >= _rss_gb() + 0.35  # the 400 MB buffer was resident at the peak
    # A later small run does not inherit the earlier, larger peak of the same process.
    small = measure(_Allocates(8), x, mode="train", steps=1, warmup=1)
    assert small.peak_memory_gb < big.peak_memory_gb - 0.3


def test_measure_rejects_bad_settings():
    x = torch.ones(4)
    for kwargs, word in [({"mode": "eval"}, "mode"), ({"attention": "flash"}, "attention"),
                         ({"precision": "int8"}, "precision"), ({"steps": 0}, "steps")]:
        with pytest.raises(ValueError, match=word):
            measure(_Allocates(1), x, **kwargs)


def test_bf16_peaks_tell_the_h100_variants_apart():
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("Some Future GPU") is None


def test_benchmark_command_reports_every_figure(capsys):
    assert main(["benchmark", "cast_tiny", "--mode", "train", "--batch", "2", "--steps", "1", "--warmup", "0",
                 "--grad-checkpointing", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    cfg = preset_config("cast_tiny")
    assert row["mode"] == "train" and row["batch"] == 2 and row["grad_checkpointing"] and row["ms_per_step"] > 0
    assert row["clips_per_s"] == pytest.approx(2000 / row["ms_per_step"], rel=0.01)
    assert row["gmacs_per_view"] == pytest.approx(count_gmacs(cfg), abs=1e-4)
    assert row["gflops_per_step"] == pytest.approx(count_step_gflops(cfg, "train", 2), abs=1e-3)
    assert row["cpu_busy"] > 0
    assert row["peak_memory_gb"] > 0
    # MFU needs the device's peak: known for listed GPUs (the benchmark runs on CUDA when there is one),
    # unknown on a CPU, where there is no MFU rather than a made-up one
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    peak = bf16_peak_tflops(gpu) if gpu else None
    assert gpu is None or row["device"] == gpu
    assert row["peak_tflops"] == peak
    if peak is None:
        assert row["mfu"] is None
    else:
        assert row["mfu"] == pytest.approx(row["gflops_per_step"] / (row["ms_per_step"] * peak), rel=0.02, abs=1e-4)
    # With a stated peak, MFU is the step's model FLOPs over time over that peak.
    assert main(["benchmark", "cast_tiny", "--steps", "1", "--warmup", "0", "--peak-tflops", "0.001",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["mfu"] == pytest.approx(1000 * row["gflops_per_step"] / row["ms_per_step"], rel=0.02)
    assert main(["benchmark", "cast_tiny", "--attention", "math", "--precision", "bf16", "--steps", "1",
                 "--warmup", "0"]) == 0
    text = capsys.readouterr().out
    for key in ("bf16", "attention math", "ms/step", "clips/s", "peak memory", "GMACs per view", "MFU"):
        assert key in text
    assert "frozen backward" not in text  # inference keeps nothing for backward
    assert main(["benchmark", "cast_tiny", "--mode", "train", "--precision", "bf16", "--frozen-backward", "bf16",
                 "--steps", "1", "--warmup", "0"]) == 0
    assert "memory full, frozen backward bf16 (not used under bf16 autocast)" in capsys.readouterr().out


def test_gemm_rate_is_the_flops_of_a_matmul_over_its_time(monkeypatch):
    """2 n^3 FLOPs per n x n matmul, `repeats` of them over the timed interval (one warm-up untimed)."""
    from cast_video import benchmark

    clock = iter([10.0, 10.5])  # the timed interval: 0.5 s
    monkeypatch.setattr(benchmark.time, "perf_counter", lambda: next(clock))
    rate = benchmark.gemm_gflops(torch.float32, torch.device("cpu"), size=64, repeats=4)
    assert rate == pytest.approx(2 * 64**3 * 4 / 0.5 / 1e9)


def test_benchmark_gemm_bound_and_memory_option(capsys):
    """--gemm: the bound is the counted FLOPs at the rate of the run's precision, and the ratio is the
    measured time over it; --memory and --frozen-backward reach the model (and neither recomputation
    nor the bf16 backward changes the counted FLOPs)."""
    assert main(["benchmark", "cast_tiny", "--precision", "bf16", "--steps", "1", "--warmup", "0", "--gemm",
                 "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row["gemm_gflops"]) == {"fp32", "bf16"} and min(row["gemm_gflops"].values()) > 0
    assert row["bound_ms"] == pytest.approx(row["gflops_per_step"] / row["gemm_gflops"]["bf16"] * 1000, rel=0.01,
                                            abs=0.1)
    assert row["time_to_bound"] == pytest.approx(row["ms_per_step"] / row["bound_ms"], rel=0.02)
    flops = {}
    for memory, backward in (("full", "fp32"), ("recompute", "fp32"), ("full", "bf16")):
        assert main(["benchmark", "cast_tiny", "--mode", "train", "--precision", "fp32", "--memory", memory,
                     "--frozen-backward", backward, "--steps", "1", "--warmup", "0", "--json"]) == 0
        row = json.loads(capsys.readouterr().out)
        assert (row["memory"], row["frozen_backward"]) == (memory, backward)
        assert row["gemm_gflops"] is None and row["bound_ms"] is None
        flops[memory, backward] = row["gflops_per_step"]
    assert len(set(flops.values())) == 1
