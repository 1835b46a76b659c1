"""`cast-video pretrain CONFIG`: VideoMAE self-supervised pre-training of a temporal expert on your videos."""

from __future__ import annotations

from ..config_utils import load_yaml


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="VideoMAE pre-training (tube masking, pixel reconstruction)")
    p.add_argument("config", help="YAML file of PretrainConfig fields (see configs/demo/pretrain.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. epochs=10")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..engine.distributed import init_distributed
    from ..engine.loop import pick_device
    from ..pretrain import PretrainConfig, pretrain

    cfg = load_yaml(PretrainConfig, args.config, args.set)
    init_distributed(pick_device(cfg.device))  # held by the command: the CLI leaves it after printing
    result = pretrain(cfg, progress=not args.no_progress)
    print(f"loss {result['loss'][0]:.4f} -> {result['loss'][-1]:.4f} over {len(result['loss'])} epochs")
    print(f"temporal expert: {result['expert']}")
    return 0
