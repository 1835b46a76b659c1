"""fp32 against bf16 autocast, with the frozen weights stored in fp32 or in bf16 (`CAST.cast_frozen_`).

    .venv/bin/python benchmarks/bench_precision.py PRESET --mode infer|train [--batch N] [--rounds R]
        [--steps S] [--warmup W] [--threads T]

The three settings are measured in one process and interleaved round by round, so that other
processes on a shared machine slow them alike: the ratios to fp32 (median over rounds) are the
result, the absolute times (minimum over rounds) only a guide; `min_ms_to_bound` divides them by the
step's counted FLOPs at this machine's GEMM rate of its precision (2048^3, measured after). One thread
by default, so that an oversubscribed machine does not make OpenMP spin. docs/benchmarks.md
("Precision") has the figures behind `precision: auto`.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from cast_video.benchmark import count_step_gflops, gemm_gflops, measure
from cast_video.models import CAST, preset_config
from cast_video.seeds import BENCHMARK_SEED


def compare(preset: str, mode: str, batch: int, rounds: int, steps: int, warmup: int) -> dict:
    cfg = preset_config(preset)
    torch.manual_seed(BENCHMARK_SEED)
    fp32 = CAST(cfg)
    models = {"fp32": (fp32, "fp32"), "bf16": (fp32, "bf16"),
              "bf16, frozen weights bf16": (copy.deepcopy(fp32).cast_frozen_(torch.bfloat16), "bf16")}
    video = torch.randn(batch, 3, cfg.num_frames, cfg.img_size, cfg.img_size)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, (model, precision) in models.items():
            params = [p for _, p in model.trainable_parameters()]
            m = measure(model, video, mode, params, precision, "sdpa", steps, warmup)
            times[name].append(round(m.ms_per_step, 1))
    ratios = {name: round(statistics.median(t / f for t, f in zip(times[name], times["fp32"], strict=True)), 2)
              for name in models}
    # the matrix units' bound of each setting: counted FLOPs at this machine's GEMM rate of its precision
    cpu = torch.device("cpu")
    rates = {"fp32": gemm_gflops(torch.float32, cpu), "bf16": gemm_gflops(torch.bfloat16, cpu)}
    gflops = count_step_gflops(cfg, mode, batch)
    bounds = {name: gflops / rates[precision] * 1000 for name, (_, precision) in models.items()}
    return {"preset": preset, "mode": mode, "batch": batch, "threads": torch.get_num_threads(),
            "ratio_to_fp32": ratios, "min_ms": {name: min(t) for name, t in times.items()}, "rounds": times,
            "gemm_gflops": {k: round(v, 1) for k, v in rates.items()}, "gflops_per_step": round(gflops, 1),
            "min_ms_to_bound": {name: round(min(times[name]) / bounds[name], 2) for name in models}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(compare(args.preset, args.mode, args.batch, args.rounds, args.steps, args.warmup)))


if __name__ == "__main__":
    main()
