"""The official CAST-B/16 EK100 model (from your clone of KHU-VLL/CAST, see tools/official_cast.py)
timed with cast-video's own harness (`cast_video.benchmark.measure`), for docs/benchmarks.md's rows
against the official implementation.

    # one row, in its own process (peak memory): the keys of `cast-video benchmark --json`
    PYTHONPATH=src .venv/bin/python benchmarks/bench_official.py --official-repo /tmp/CAST --mode train \
        [--threads 1] [--warmup 0] [--steps 1]
    # speed, A B A B in one process: the official training step, then ours under each option,
    # MEMORY or MEMORY/FROZEN_BACKWARD (CASTConfig.memory, CASTConfig.frozen_backward)
    PYTHONPATH=src .venv/bin/python benchmarks/bench_official.py --official-repo /tmp/CAST \
        --interleave full,bf16,recompute_bf16/bf16 [--rounds 2] [--threads 1]

Both models: batch 1, fp32, random weights (seeded alike), 16 frames at 224, the official drop path
rate 0.2 and our preset's, the official script's trainable parameters (44,784,781) and ours, and the
same stand-in loss (logsumexp of every head's logits). The interleaved mode prints one JSON line per
step and then the median over the rounds of official time / ours, per option.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from official_cast import official_ek100_for_training  # noqa: E402

from cast_video.benchmark import device_name, logits_loss, measure  # noqa: E402
from cast_video.models import CAST, preset_config  # noqa: E402
from cast_video.seeds import BENCHMARK_SEED  # noqa: E402


def official_loss(out: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """`logits_loss` on the official model's (noun, verb) tuple."""
    return logits_loss(dict(enumerate(out)))


def _official(repo: Path):
    torch.manual_seed(BENCHMARK_SEED)
    model = official_ek100_for_training(repo)
    return model, [q for q in model.parameters() if q.requires_grad]


def one_row(args, video: torch.Tensor) -> dict:
    model, params = _official(args.official_repo)
    m = measure(model, video, args.mode, params, "fp32", "sdpa", args.steps, args.warmup, loss_fn=official_loss)
    return {"preset": "official compo_bidir_vit_base_patch16_224", "mode": args.mode, "batch": args.batch,
            "precision": "fp32", "attention": "official", "compile": False, "grad_checkpointing": False,
            "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
            "ms_per_step": round(m.ms_per_step, 1), "clips_per_s": round(args.batch * 1000 / m.ms_per_step, 4),
            "peak_memory_gb": round(m.peak_memory_gb, 3), "memory_kind": m.memory_kind,
            "cpu_busy": round(m.cpu_busy, 2), "mfu": None, "peak_tflops": None,
            "trainable_params": sum(q.numel() for q in params), "torch_version": torch.__version__}


def interleaved(args, video: torch.Tensor) -> dict:
    official, official_params = _official(args.official_repo)
    torch.manual_seed(BENCHMARK_SEED)
    ours = CAST(preset_config("cast_b16_ek100"))
    ours_params = [q for _, q in ours.trainable_parameters()]
    times: dict[str, list[float]] = {"official": [], **{m: [] for m in args.interleave.split(",")}}
    for r in range(args.rounds):
        for name in times:
            if name == "official":
                m = measure(official, video, "train", official_params, "fp32", "sdpa", 1, args.warmup,
                            loss_fn=official_loss)
            else:
                memory, _, backward = name.partition("/")  # replace() checks both values
                ours.config = dataclasses.replace(ours.config, memory=memory, frozen_backward=backward or "fp32")
                m = measure(ours, video, "train", ours_params, "fp32", "sdpa", 1, args.warmup)
            times[name].append(m.ms_per_step)
            print(json.dumps({"round": r, "name": name, "ms": round(m.ms_per_step), "cpu_busy": round(m.cpu_busy, 2)}),
                  flush=True)
    speedup = {n: round(statistics.median(o / t for o, t in zip(times["official"], v, strict=True)), 3)
               for n, v in times.items()}
    return {"threads": torch.get_num_threads(), "speedup_vs_official_median": speedup,
            "ms": {n: [round(t) for t in v] for n, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-repo", required=True, type=Path, help="a clone of KHU-VLL/CAST")
    parser.add_argument("--mode", default="train", choices=["infer", "train"])
    parser.add_argument("--interleave", default="", metavar="OPTIONS",
                        help="comma-separated options of ours to time against the official step: "
                             "MEMORY or MEMORY/FROZEN_BACKWARD, e.g. full,bf16/bf16")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    video = torch.randn(args.batch, 3, 16, 224, 224)
    print(json.dumps(interleaved(args, video) if args.interleave else one_row(args, video)))


if __name__ == "__main__":
    main()
