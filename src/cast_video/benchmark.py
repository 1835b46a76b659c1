"""Speed and memory of a preset: clips/s, ms/step, peak memory, GMACs per view and, on a GPU, MFU.

`measure` times any module on any input (so the same harness can time another implementation
of CAST); `run_benchmark` builds a preset and calls it.

Peak memory is the peak of the measured run only, not of the whole process:
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (tensors only; the
  caching allocator's reserve and the CUDA context are not counted).
- CPU: the kernel's resident-set high-water mark (VmHWM), reset through `/proc/self/clear_refs`
  just before the warm-up, so building the model does not count but its weights (resident
  throughout) do. Without that file (not Linux) it falls back to `ru_maxrss`, the peak of the whole
  process, and says so in `memory_kind`.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError
from .models import CAST, preset_config
from .models.cast import CASTConfig
from .models.counting import count_gmacs
from .precision import DTYPES, autocast, prepare
from .seeds import BENCHMARK_SEED

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, for MFU.
# Matched against torch.cuda.get_device_name in order, so the more specific names come first.
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("B200", 2250.0),
    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("4090", 165.2),
]
MODES = ("infer", "train")
RUNTIMES = ("torch", "onnxruntime")
ATTENTIONS = ("sdpa", "math")


@dataclass
class Measurement:
    ms_per_step: float
    peak_memory_gb: float
    memory_kind: str
    cpu_busy: float  # process CPU time / (wall time x threads) of the timed steps; well below 1: contended


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
    cpu_busy: float
    gmacs_per_view: float
    gflops_per_step: float
    mfu: float | None
    peak_tflops: float | None
    torch_version: str
    precision_reason: str = ""
    runtime: str = "torch"
    export_seconds: float | None = None  # onnxruntime: the time to export the model first (not in ms/step)
    memory: str = ""  # CASTConfig.memory: what training keeps for backward
    # --gemm: the machine's matrix rate, measured in the same process, and the bound it puts on a step
    gemm_gflops: dict[str, float] | None = None  # {"fp32": GFLOP/s, "bf16": GFLOP/s} of a GEMM_SIZE^3 matmul
    bound_ms: float | None = None  # counted GFLOPs per step / the GEMM rate of the step's precision
    time_to_bound: float | None = None  # ms_per_step / bound_ms: 1 is the matrix units' speed limit
    frozen_backward: str = ""  # CASTConfig.frozen_backward: the precision of the frozen experts' input gradients


GEMM_SIZE = 2048


def gemm_gflops(dtype: torch.dtype, device: torch.device, size: int = GEMM_SIZE, repeats: int = 3) -> float:
    """The rate of a size^3 matmul in `dtype` on `device`, in GFLOP/s (2 size^3 FLOPs each; one warm-up).

    A large square GEMM is the fastest thing the matrix units do, so a step's counted FLOPs at this
    rate bound its time from below; how far a step is from that bound says how much of it is not
    matrix work at full speed (casts, copies, attention, element-wise ops)."""
    gen = torch.Generator(device=device).manual_seed(BENCHMARK_SEED)
    a, b = (torch.randn(size, size, generator=gen, device=device).to(dtype) for _ in range(2))
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def bf16_peak_tflops(gpu_name: str) -> float | None:
    """The dense bf16 peak of a GPU named as `torch.cuda.get_device_name` names it; None if unlisted."""
    return next((tflops for key, tflops in BF16_PEAK_TFLOPS if key in gpu_name), None)


def device_peak_tflops(device: torch.device) -> float | None:
    return bf16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class CountSyncs(TorchDispatchMode):
    """Counts device-to-host scalar reads (`.item()`, `int(t)`, `if t:`) made inside it: each one stalls an
    accelerator, so a batched GPU stage (augmentation, a training step) should make none."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


class PeakMemory:
    """Peak memory between `start()` and `read()`, in GB (2**30 bytes); see the module docstring."""

    CLEAR_REFS = Path("/proc/self/clear_refs")

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda max allocated"
        if device.type != "cuda":
            self.kind = "peak RSS of this run (VmHWM reset)" if self.CLEAR_REFS.exists() else "peak RSS of the process"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.CLEAR_REFS.exists():
            self.CLEAR_REFS.write_text("5")  # 5: reset the peak RSS to the current RSS (Linux >= 4.0)

    def read(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.CLEAR_REFS.exists():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB -> GB
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return kb / (2**30 if platform.system() == "Darwin" else 2**20)


def logits_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """A stand-in loss over every output of the model's dict: logsumexp costs what cross-entropy costs
    and needs no labels."""
    return sum(x.float().logsumexp(-1).mean() for x in out.values())


def check_settings(mode: str, attention: str, steps: int, warmup: int, batch: int = 1) -> None:
    """Settings a user types, checked before any work (one-line ConfigErrors)."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if attention not in ATTENTIONS:
        raise ConfigError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if steps < 1 or warmup < 0:
        raise ConfigError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if batch < 1:
        raise ConfigError(f"batch must be positive, got {batch}")


def measure(model: nn.Module, inputs: torch.Tensor, mode: str = "infer",
            params: Iterable[nn.Parameter] | None = None, precision: str = "fp32", attention: str = "sdpa",
            steps: int = 3, warmup: int = 1, loss_fn: Callable = logits_loss) -> Measurement:
    """`warmup` untimed steps, then the mean time of `steps` timed ones, and the peak memory of both.

    infer: a forward under no_grad in eval mode. train: forward, backward and an AdamW step over
    `params` (the trainable parameters; frozen ones hold neither gradients nor optimizer state).
    `attention="math"` forces PyTorch's reference attention (`SDPBackend.MATH`) for every
    `scaled_dot_product_attention` call; modules that write attention out by hand are unaffected.
    """
    check_settings(mode, attention, steps, warmup)
    if precision not in DTYPES:
        raise ConfigError(f"precision must be one of {tuple(DTYPES)}, got {precision!r}")
    device = inputs.device
    train = mode == "train"
    model.train(train)
    amp = autocast(precision, device)
    params = list(params) if params is not None else list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4) if train else None
    # fp16 gradients underflow without loss scaling; the scaler's cost belongs in the measurement
    scaler = torch.amp.GradScaler(device.type) if train and precision == "fp16" and device.type == "cuda" else None

    def step() -> None:
        with sdpa_kernel(SDPBackend.MATH) if attention == "math" else nullcontext():
            if not train:
                with torch.no_grad(), amp:
                    model(inputs)
                return
            with amp:
                loss = loss_fn(model(inputs))
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    peak = PeakMemory(device)
    peak.start()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    busy = (time.process_time() - cpu_start) / wall / torch.get_num_threads()
    return Measurement(wall * 1000 / steps, peak.read(), peak.kind, busy)


def count_step_gflops(config: CASTConfig, mode: str, batch: int) -> float:
    """Model FLOPs of one step (forward, plus backward in train mode) on the meta device.

    The backward of a frozen expert computes activation gradients but no weight gradients, so a
    CAST training step is about 2x, not the usual 3x, its forward; counting it beats assuming it.
    Recomputation (activation checkpointing, `CASTConfig.memory`) is not counted: MFU counts the model's FLOPs
    (and `frozen_backward`'s bf16 GEMMs count as what they are, the same FLOPs).
    """
    with torch.device("meta"):
        plain = dataclasses.replace(config, grad_checkpointing=False, memory="full", frozen_backward="fp32")
        model = CAST(plain).train(mode == "train")
        video = torch.empty(batch, 3, config.num_frames, config.img_size, config.img_size)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        if mode == "train":
            logits_loss(model(video)).backward()
        else:
            with torch.no_grad():
                model(video)
    return counter.get_total_flops() / 1e9


def run_benchmark(preset: str, mode: str = "infer", batch: int = 1, precision: str = "auto", attention: str = "sdpa",
                  compile: bool = False, grad_checkpointing: bool = False, steps: int = 3, warmup: int = 1,
                  device: str = "auto", threads: int | None = None, peak_tflops: float | None = None,
                  overrides: dict | None = None, runtime: str = "torch", memory: str | None = None,
                  gemm: bool = False, frozen_backward: str | None = None) -> BenchResult:
    """Build `preset` (random weights: speed does not depend on their values) and measure it.

    `precision="auto"` resolves as training and predict resolve it (`cast_video.precision`); in bf16 the
    frozen experts are stored in bf16 (`CAST.cast_frozen_`), as predict and training store them.
    `runtime="onnxruntime"`: export the model to ONNX first (`cast_video.deploy.export`, outside the
    timing) and time onnxruntime's CPU session on the same input, through the same harness (fp32).
    `memory` and `frozen_backward` override the preset's `CASTConfig` fields (None: the preset's).
    `gemm`: also measure the fp32 and bf16 GEMM rates (`gemm_gflops`, after the timed steps) and the
    step's bound at the rate of its precision (fp16 is bounded at the bf16 rate).
    """
    check_settings(mode, attention, steps, warmup, batch)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    on_cpu = device in ("auto", "cpu")
    if runtime == "onnxruntime" and (mode != "infer" or precision not in ("auto", "fp32") or compile or not on_cpu):
        raise ConfigError("--runtime onnxruntime measures fp32 inference (--mode infer) on the CPU, without --compile")
    if runtime == "onnxruntime":
        device, precision = "cpu", "fp32"
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if threads is not None:
        torch.set_num_threads(threads)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    chosen = {k: v for k, v in (("memory", memory), ("frozen_backward", frozen_backward)) if v is not None}
    cfg = preset_config(preset, {**(overrides or {}), **chosen})
    torch.manual_seed(BENCHMARK_SEED)
    # Model FLOPs (for MFU) are counted on `cfg`, without the recomputation checkpointing adds.
    model = CAST(dataclasses.replace(cfg, grad_checkpointing=grad_checkpointing)).to(dev)
    precision, reason = prepare(model, precision, dev)
    runner = torch.compile(model) if compile else model
    video = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size, device=dev)
    params = [p for _, p in model.trainable_parameters()]
    with tempfile.TemporaryDirectory() as tmp:
        export_seconds = None
        if runtime == "onnxruntime":
            runner, export_seconds = _onnx_runner(model, Path(tmp), threads)
        m = measure(runner, video, mode, params, precision, attention, steps, warmup)
    gflops = count_step_gflops(cfg, mode, batch)
    rates = {name: round(gemm_gflops(dt, dev), 1) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))} \
        if gemm else None
    bound_ms = round(gflops / rates["fp32" if precision == "fp32" else "bf16"] * 1000, 1) if rates else None
    peak_tflops = peak_tflops or device_peak_tflops(dev)
    mfu = gflops * 1e9 / (m.ms_per_step / 1000) / (peak_tflops * 1e12) if peak_tflops else None
    return BenchResult(
        preset, mode, batch, precision, attention, compile, grad_checkpointing, device_name(dev),
        torch.get_num_threads(), round(m.ms_per_step, 1), round(batch * 1000 / m.ms_per_step, 4),
        round(m.peak_memory_gb, 3), m.memory_kind, round(m.cpu_busy, 2), round(count_gmacs(cfg), 4), round(gflops, 3),
        round(mfu, 4) if mfu is not None else None, peak_tflops, torch.__version__, reason, runtime, export_seconds,
        cfg.memory, rates, bound_ms, round(m.ms_per_step / bound_ms, 2) if bound_ms else None,
        frozen_backward=cfg.frozen_backward,
    )


def _onnx_runner(model: CAST, folder: Path, threads: int | None) -> tuple[nn.Module, float]:
    """The model exported to ONNX in `folder`, as an onnxruntime module, and the export's seconds."""
    from .deploy.contract import Contract
    from .deploy.export import export_onnx
    from .deploy.runtime import OnnxModel

    start = time.perf_counter()
    export_onnx(model.eval(), Contract.of_model(model), folder / "model.onnx")
    seconds = round(time.perf_counter() - start, 1)
    return OnnxModel(folder / "model.onnx", threads or torch.get_num_threads()), seconds
