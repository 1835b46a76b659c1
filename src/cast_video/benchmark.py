"""Speed and memory of a preset: clips/s, ms/step, peak memory, GMACs per view and, on a GPU, MFU.

One configuration per process: the peak resident memory on a CPU (`ru_maxrss`) is a per-process
high-water mark, so the command line measures one setting per run and the matrix script
(`benchmarks/run_matrix.py`) starts a fresh process for each row.
"""

from __future__ import annotations

import platform
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .models import CAST, preset_config
from .models.counting import count_gmacs

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, for MFU.
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


@dataclass
class BenchResult:
    preset: str
    mode: str
    batch: int
    precision: str
    attention: str
    compile: bool
    grad_checkpointing: bool
    device: str
    threads: int
    ms_per_step: float
    clips_per_s: float
    peak_memory_gb: float
    memory_kind: str
    gmacs_per_view: float
    mfu: float | None
    peak_tflops: float | None
    torch_version: str


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def run_benchmark(preset: str, mode: str = "infer", batch: int = 1, precision: str = "fp32", attention: str = "sdpa",
                  compile: bool = False, grad_checkpointing: bool = False, steps: int = 3, warmup: int = 1,
                  device: str = "auto", overrides: dict | None = None) -> BenchResult:
    """Warm-up steps, then `steps` timed ones. Train mode: forward, backward and an AdamW step over the
    trainable parameters only (the frozen experts hold no gradients and no optimizer state)."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg = preset_config(preset, overrides)
    torch.manual_seed(0)
    model = CAST(cfg).to(dev)
    model.grad_checkpointing = grad_checkpointing
    model.train(mode == "train")
    runner = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-4) if mode == "train" else None
    video = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    amp = torch.autocast(dev.type, dtype=dtype) if dtype else nullcontext()
    kernel = sdpa_kernel(SDPBackend.MATH) if attention == "math" else nullcontext()

    def step():
        with kernel, amp, (nullcontext() if mode == "train" else torch.no_grad()):
            out = runner(video)
            if mode == "train":
                logits = out.values() if isinstance(out, dict) else [out]
                loss = sum(x.float().logsumexp(-1).mean() for x in logits)
        if mode == "train":
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**30, "cuda max allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS of the process"
    gmacs = count_gmacs(cfg)
    peak_tflops = device_peak_tflops(dev)
    # Training: the backward pass computes activation gradients through every layer (about one forward)
    # but weight gradients only for the trainable ~20%, so a step is counted as 2 forwards, not 3.
    flops_per_step = 2 * gmacs * 1e9 * batch * (2 if mode == "train" else 1)
    mfu = flops_per_step / seconds / (peak_tflops * 1e12) if peak_tflops else None
    return BenchResult(preset, mode, batch, precision, attention, compile, grad_checkpointing,
                       torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
                       torch.get_num_threads(), round(seconds * 1000, 1), round(batch / seconds, 3), round(peak, 3),
                       kind, round(gmacs, 2), round(mfu, 4) if mfu is not None else None, peak_tflops,
                       torch.__version__)
