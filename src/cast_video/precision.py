"""Which autocast precision a run uses: `auto` picks bf16 only where bf16 is faster than fp32.

One rule for train, eval, predict and benchmark (docs/benchmarks.md has the measurements behind it):

- CUDA: bf16 when the GPU has bf16 units (`torch.cuda.is_bf16_supported()`, Ampere and later), else
  fp32 (fp16 with loss scaling stays available as `precision: fp16`, but is never chosen silently).
- CPU: bf16 only when the CPU computes bf16 dot products natively (AMX, or AVX512-BF16: flags in
  /proc/cpuinfo) AND the model costs at least `CPU_BF16_MIN_GMACS` per view; fp32 otherwise.
  Without those instructions PyTorch converts bf16 to fp32 and back around every matmul (CAST-B/16
  inference 7.9x slower in bf16 on an EPYC without them); with them a small model still loses more
  to the casts than it gains (cast_tiny training 1.7-2x slower in bf16, with AMX and with
  AVX512-BF16), while CAST-B/16 gains (inference 3.1x faster with AMX; inference and training
  0.4-0.8x the time with AVX512-BF16).
- Any other device (mps, xpu, ...): fp32, the one precision every backend computes correctly.

An explicit `bf16`, `fp16` or `fp32` is always obeyed; the reason then says when it is likely slow.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Measured: cast_tiny (0.04 GMACs per view) is slower in bf16, CAST-B/16 (390 GMACs) faster; no size in
# between was measured. 10 GMACs sits well below a ViT-S-sized CAST (about 100), whose matrices are
# already large enough for the bf16 units, and far above the tiny models where the casts dominate.
CPU_BF16_MIN_GMACS = 10.0
_CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags of CPUs that compute bf16 dot products natively (Intel Sapphire Rapids and
# later; AMD Zen 4 and later, Intel Cooper Lake); without them PyTorch converts to fp32 and back.
NATIVE_BF16 = (("AMX", {"amx_bf16", "amx_tile"}), ("AVX512-BF16", {"avx512_bf16"}))


def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo; empty where that file does not exist."""
    if not _CPUINFO.exists():
        return set()
    for line in _CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 matrix instructions ("AMX" or "AVX512-BF16"), None when it has neither."""
    flags = cpu_flags()
    return next((name for name, needed in NATIVE_BF16 if needed <= flags), None)


def _model_gmacs(model_config) -> float:
    from .models.counting import count_gmacs  # builds the model on the meta device: no memory, ~1 s for ViT-B

    return count_gmacs(model_config)


def _auto(device: torch.device, model_config) -> tuple[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {name} computes bf16 natively"
        return "fp32", f"auto: {name} has no bf16 units (precision=fp16 uses its fp16 units with loss scaling)"
    if device.type != "cpu":
        return "fp32", f"auto: fp32 on {device.type}"
    units = cpu_bf16_units()
    if units is None:
        return "fp32", "auto: this CPU has no native bf16 units (AMX, AVX512-BF16), so bf16 would be slower"
    if model_config is None:
        return "fp32", "auto: the model's size is unknown, and bf16 on a CPU pays for large models only"
    gmacs = _model_gmacs(model_config)
    if gmacs < CPU_BF16_MIN_GMACS:
        return "fp32", f"auto: the model costs {gmacs:.3g} GMACs per view, below the {CPU_BF16_MIN_GMACS:g} " \
                       "from which bf16 beats fp32 on a CPU"
    return "bf16", f"auto: this CPU has {units} and the model costs {gmacs:.3g} GMACs per view"


def _explicit(requested: str, device: torch.device) -> tuple[str, str]:
    if requested == "bf16" and device.type == "cpu" and cpu_bf16_units() is None:
        return requested, "as requested (this CPU has no native bf16 units: expect bf16 to be slower than fp32)"
    if requested == "fp16" and device.type == "cpu":
        return requested, "as requested (fp16 on a CPU is slow and has no loss scaling)"
    return requested, "as requested"


def resolve_precision(requested: str, device: torch.device | str, model_config=None) -> tuple[str, str]:
    """(precision, reason): `requested` when it is bf16, fp16 or fp32; the rule of the module for auto.

    `model_config` (a CASTConfig) is needed on an AMX CPU only, where the model's size decides.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision: must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device = torch.device(device)
    precision, reason = _explicit(requested, device) if requested != "auto" else _auto(device, model_config)
    logger.info("precision %s (%s)", precision, reason)
    return precision, reason


def prepare(model, requested: str, device: torch.device | str) -> tuple[str, str]:
    """`resolve_precision` for `model` (a CAST) on `device`, with the frozen weights stored in bf16 when the
    answer is bf16 (`CAST.cast_frozen_`). Train, eval, predict and benchmark call it."""
    precision, reason = resolve_precision(requested, device, model.config)
    if precision == "bf16":
        model.cast_frozen_(torch.bfloat16)
    if model.config.frozen_backward == "bf16":
        if not model.config.freeze_experts:
            logger.warning("frozen_backward bf16 has nothing to act on: freeze_experts is false, so no expert "
                           "layer is frozen")
        elif precision != "fp32":
            logger.info("frozen_backward bf16 is not used under %s autocast, which runs that backward in %s already",
                        precision, precision)
        elif torch.device(device).type == "cpu" and cpu_bf16_units() is None:
            logger.warning("frozen_backward bf16 on a CPU without native bf16 units (AMX, AVX512-BF16): "
                           "expect it to be slower than fp32")
        elif torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
            logger.warning("frozen_backward bf16 on a GPU without bf16 units: expect it to be slower than fp32")
    return precision, reason


def autocast(precision: str, device: torch.device):
    """The autocast context of a resolved precision (fp32: none). `auto` must be resolved first."""
    if precision not in DTYPES:
        raise ConfigError(f"precision {precision!r}: resolve it first (cast_video.precision.resolve_precision)")
    dtype = DTYPES[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
