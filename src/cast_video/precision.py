"""Which autocast precision a run uses: `auto` picks bf16 only where bf16 is faster than fp32.

One rule for train, eval, predict and benchmark (docs/benchmarks.md has the measurements behind it):

- CUDA: bf16 when the GPU has bf16 units (`torch.cuda.is_bf16_supported()`, Ampere and later), else
  fp32 (fp16 with loss scaling stays available as `precision: fp16`, but is never chosen silently).
- CPU: bf16 only when the CPU has AMX tiles for bf16 (`amx_bf16` and `amx_tile` in /proc/cpuinfo,
  Intel Sapphire Rapids and later) AND the model costs at least `AMX_MIN_GMACS` per view. Elsewhere
  PyTorch computes bf16 matmuls through conversions to fp32, which is slower than fp32 itself
  (CAST-B/16 inference 7.9x slower on an AMD EPYC with AVX512-BF16 but no AMX), and even with AMX a
  small model loses more to the casts than it gains (cast_tiny training 2x slower in bf16 on a Xeon
  with AMX, while CAST-B/16 inference was 3.1x faster).
- Any other device (mps, xpu, ...): fp32, the one precision every backend computes correctly.

An explicit `bf16`, `fp16` or `fp32` is always obeyed; the reason then says when it is likely slow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Between cast_tiny (0.04 GMACs per view: 2x slower in bf16 with AMX) and CAST-B/16 (390 GMACs: 3.1x
# faster). A ViT-S-sized CAST (about 100 GMACs) has matrices large enough to keep the AMX tiles busy;
# 10 GMACs leaves a margin below it without reaching the sizes where the casts dominate.
AMX_MIN_GMACS = 10.0
_CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The feature flags of the first CPU in /proc/cpuinfo; empty where that file does not exist."""
    if not _CPUINFO.exists():
        return set()
    for line in _CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_amx_bf16() -> bool:
    return {"amx_bf16", "amx_tile"} <= cpu_flags()


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
    if not cpu_has_amx_bf16():
        return "fp32", "auto: this CPU has no AMX bf16 units, so bf16 would be emulated and slower than fp32"
    if model_config is None:
        return "fp32", "auto: the model's size is unknown, and bf16 pays on AMX only for large models"
    gmacs = _model_gmacs(model_config)
    if gmacs < AMX_MIN_GMACS:
        return "fp32", f"auto: the model costs {gmacs:.3g} GMACs per view, below the {AMX_MIN_GMACS:g} " \
                       "where bf16 on AMX beats fp32"
    return "bf16", f"auto: this CPU has AMX bf16 units and the model costs {gmacs:.3g} GMACs per view"


def _explicit(requested: str, device: torch.device) -> tuple[str, str]:
    if requested == "bf16" and device.type == "cpu" and not cpu_has_amx_bf16():
        return requested, "as requested (this CPU has no AMX bf16 units: expect bf16 to be slower than fp32)"
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
