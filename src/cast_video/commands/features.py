"""`cast-video features INPUTS... --model DIR --out FILE`: spatial, temporal and fused embeddings per video."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("features", help="embeddings of videos, folders or annotation files (.safetensors / .npz)")
    p.add_argument("inputs", nargs="+", help="video files, folders of videos, or annotation files (.csv, .txt, "
                   ".json) of any format training reads")
    p.add_argument("--model", required=True, help="a directory written by save_pretrained / train (or a hub id)")
    p.add_argument("--out", required=True, help="FILE.safetensors or FILE.npz; a rerun skips finished videos")
    p.add_argument("--clips", type=int, default=2, help="temporal views averaged per video")
    p.add_argument("--crops", type=int, default=3, choices=[1, 3], help="spatial views averaged per video")
    p.add_argument("--per-clip", action="store_true", help="one row per temporal view (crops averaged)")
    p.add_argument("--window", type=float, help="one row per window of this many seconds (centre crop)")
    p.add_argument("--stride", type=float, help="seconds between windows (default: the window)")
    p.add_argument("--format", help="the annotation files' format: epic_csv, cast_epic, k400_csv, ssv2_json, list "
                   "or generic (default: --config's data.format, else found from each file's suffix and header)")
    p.add_argument("--config", help="a train config: its data section (root, templates, labels.json, ...) "
                   "reads the annotation files")
    p.add_argument("--root", help="folder the annotation files' videos are under (default: --config's "
                   "data.root, else each file's folder)")
    p.add_argument("--labels-json", help="SSV2's labels.json (default: the one beside the SSV2 JSON)")
    p.add_argument("--batch-size", type=int, default=8, help="views per forward pass")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto (default): bf16 where it is faster (cast_video.precision), else fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _data_config(args):
    """(DataConfig, format) for the annotation files among the inputs: --config's data section, with
    --root / --labels-json / --format over it."""
    import dataclasses

    from ..data import DataConfig

    data, fmt = DataConfig(), args.format
    if args.config:
        from ..config_utils import load_yaml
        from ..engine import TrainConfig

        data = load_yaml(TrainConfig, args.config).data
        fmt = fmt or data.format
    return dataclasses.replace(data, root=args.root or data.root, labels_json=args.labels_json or data.labels_json,
                               flip=False), fmt


def run(args) -> int:
    import torch

    from ..engine.distributed import init_distributed
    from ..engine.features import FeatureOptions, extract_features
    from ..engine.rundir import head_labels, resolve_model_dir
    from ..weights import from_pretrained

    options = FeatureOptions(clips=args.clips, crops=args.crops, per_clip=args.per_clip, window=args.window,
                             stride=args.stride, batch_size=args.batch_size, precision=args.precision)
    info = init_distributed(torch.device(args.device))
    model = from_pretrained(resolve_model_dir(args.model))
    data, fmt = _data_config(args)
    summary = extract_features(model, args.inputs, args.out, options, head_labels(model.config), args.device,
                               info, progress=not args.no_progress, data=data, fmt=fmt)
    if info.main:
        for bad in summary["failed"]:
            print(f"skipped {bad['item']}: {bad['error']}")
        print(f"wrote {args.out}: {summary['rows']} rows, widths {summary['dims']}, {len(summary['failed'])} skipped")
    return 0
