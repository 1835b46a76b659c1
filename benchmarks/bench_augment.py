"""Batch augmentation (`ClipAugment`) time per batch and its device-to-host reads.

    .venv/bin/python benchmarks/bench_augment.py [--device cpu|cuda] [--batch 8] [--size 224] [--frames 16]

The default training augmentation (flip, RandAugment rand-m7-n4-mstd0.5-inc1, mixup 0.8 / cutmix 1.0
with mix_prob 0.9) on a uint8 batch already on the device, keyed by dataset indices as the engine calls
it. Reports the median time of 10 batches after 2 warm-ups and the number of `aten::_local_scalar_dense`
calls (host reads that stall an accelerator) per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cast_video.benchmark import CountSyncs
from cast_video.data import DataConfig, build_gpu_augment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=16)
    args = parser.parse_args()
    device = torch.device(args.device)
    aug = build_gpu_augment(DataConfig(), {"action": 400}, seed=0).to(device).train()
    video = torch.randint(0, 256, (args.batch, 3, args.frames, args.size, args.size), dtype=torch.uint8, device=device)
    labels = {"action": torch.randint(0, 400, (args.batch,), device=device)}
    times = []
    for step in range(12):
        keys = torch.arange(step * args.batch, (step + 1) * args.batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        aug(video, labels, keys=keys, epoch=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    with CountSyncs() as reads:
        aug(video, labels, keys=torch.arange(args.batch), epoch=1)
    print(f"device {device}, batch {args.batch} x {args.frames} x {args.size}^2, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads: {1000 * statistics.median(times[2:]):.1f} ms per batch, "
          f"{reads.count} host reads")


if __name__ == "__main__":
    main()
