"""`cast-video predict VIDEO --model MODEL_OR_RUN_DIR`: the top classes, by name, or a timeline."""

from __future__ import annotations

import json

from ..precision import PRECISIONS


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict the classes of a video, a folder of videos or a long video",
                       description=__doc__ + " Class names come from the model's config.json.")
    p.add_argument("path", help="a video file or a folder of videos")
    p.add_argument("--model", required=True, help="a run folder (its model/), a model folder written by train "
                   "or save_pretrained, a hub id, or a file written by `cast-video export` (.onnx: onnxruntime, "
                   ".pt2: torch.export)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--clips", type=int, default=2, help="temporal views")
    p.add_argument("--crops", type=int, default=3, choices=[1, 3], help="spatial views")
    p.add_argument("--window", type=float, help="seconds per window: predict a timeline over a long video")
    p.add_argument("--stride", type=float, help="seconds between windows (default: the window)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast dtype; auto: bf16 where it is faster than fp32 (see docs/benchmarks.md)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..deploy.runtime import load_model
    from ..engine.predict import Predictor, find_videos, summarize
    from ..engine.rundir import resolve_model_dir

    model, contract = load_model(resolve_model_dir(args.model))
    predictor = Predictor(model, contract.class_names, args.clips, args.crops, args.device, args.precision,
                          contract=contract)
    results = []
    for video in find_videos(args.path):
        if args.window:
            results.append(predictor.timeline(video, args.window, args.stride or args.window, args.topk))
        else:
            results.append(predictor.video(video, args.topk))
        if not args.json:
            print(summarize(results[-1]))
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return 0
