"""`cast-video explain VIDEO --model DIR --out OUTDIR`: what the model looked at in a video, through predict's
views (the predictions are predict's); the pictures draw one view, the saved maps keep all."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("explain", help="cross-attention maps and Grad-CAM of a video, as a page and images")
    p.add_argument("video", help="a video file or a frame folder")
    p.add_argument("--model", required=True, help="a directory written by save_pretrained / train (or a hub id)")
    p.add_argument("--out", required=True, help="output folder (index.html, PNGs, GIF, maps, frames.json)")
    p.add_argument("--clips", type=int, default=2, help="temporal views, as predict's")
    p.add_argument("--crops", type=int, default=3, choices=[1, 3], help="spatial views, as predict's")
    p.add_argument("--view", type=int, help="the view the pictures draw, clip * crops + crop (default: the "
                   "middle clip's centre crop)")
    p.add_argument("--clip-at", type=float, help="explain the crops of one clip centred at this second instead "
                   "of the clips of the whole video")
    p.add_argument("--clip-len", type=float, default=2.0, help="seconds the clip spans with --clip-at")
    p.add_argument("--target", help="class for the Grad-CAM view: NAME, INDEX or HEAD=NAME (default: predicted)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine.explain import explain_clip
    from ..engine.explain_page import write_explanation
    from ..engine.rundir import head_labels, resolve_model_dir
    from ..weights import from_pretrained

    model = from_pretrained(resolve_model_dir(args.model))
    exp = explain_clip(model, args.video, head_labels(model.config), args.clip_at, args.clip_len, args.target,
                       args.topk, args.device, args.clips, args.crops, args.view)
    for head, rows in exp.top.items():
        print(f"{head}: " + ", ".join(f"{r['name']} {r['score']:.3f}" for r in rows))
    written = write_explanation(exp, args.out)
    print(f"wrote {len(written)} files to {args.out}; open {written[0]}")
    return 0
