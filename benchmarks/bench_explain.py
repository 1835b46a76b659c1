"""`explain` against `predict` on one video: what seeing the maps costs over the prediction alone.

    .venv/bin/python benchmarks/bench_explain.py PRESET VIDEO [--rounds R] [--threads T] [--clips C --crops K]

One process, one model (random weights: the time does not depend on them), predict's views for both. A is
`Predictor.video` (what `cast-video predict` runs per video), B is `explain_clip` + `write_explanation`
(what `cast-video explain` runs: the captured forward pass, Grad-CAM, then the page, PNGs and GIF), run in
turn A B A B ... so that a shared machine slows both alike; the ratio B/A is the median of the pairs. Both
run in fp32 (explain always does; predict's `auto` is fp32 on a CPU without bf16 units). Model loading is
not timed. docs/EXPLAIN.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time

import torch

from cast_video.engine.explain import explain_clip
from cast_video.engine.explain_page import write_explanation
from cast_video.engine.predict import Predictor
from cast_video.models import CAST, preset_config
from cast_video.seeds import BENCHMARK_SEED


def compare(preset: str, video: str, rounds: int, clips: int, crops: int) -> dict:
    torch.manual_seed(BENCHMARK_SEED)
    model = CAST(preset_config(preset)).eval()
    predictor = Predictor(model, clips=clips, crops=crops, precision="fp32")
    times: dict[str, list[float]] = {"predict": [], "explain": [], "explain_files": []}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(rounds):
            start = time.perf_counter()
            predictor.video(video)
            times["predict"].append(round(time.perf_counter() - start, 2))
            start = time.perf_counter()
            exp = explain_clip(model, video, clips=clips, crops=crops)
            middle = time.perf_counter()
            write_explanation(exp, out)
            end = time.perf_counter()
            times["explain"].append(round(end - start, 2))
            times["explain_files"].append(round(end - middle, 2))
    ratio = statistics.median(e / p for e, p in zip(times["explain"], times["predict"], strict=True))
    return {"preset": preset, "video": video, "views": clips * crops, "frames": model.config.num_frames,
            "size": model.config.img_size, "threads": torch.get_num_threads(), "explain_over_predict": round(ratio, 2),
            "seconds": times, "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("video")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--crops", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(compare(args.preset, args.video, args.rounds, args.clips, args.crops)))


if __name__ == "__main__":
    main()
