"""`cast-video train CONFIG [key=value ...]`; under torchrun: `torchrun --nproc_per_node=N -m cast_video train ...`."""

from __future__ import annotations

import json

from ..config_utils import load_yaml
from ..engine import TrainConfig, train


def register(sub) -> None:
    p = sub.add_parser("train", help="train a CAST model from a YAML config")
    p.add_argument("config", help="YAML file, e.g. configs/ek100.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.epochs=10 resume=auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_yaml(TrainConfig, args.config, args.overrides)
    metrics = train(cfg, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2))
    return 0
