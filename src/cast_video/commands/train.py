"""`cast-video train CONFIG [key=value ...]`; under torchrun: `torchrun --nproc_per_node=N -m cast_video train ...`.

`--print-config` prints the resolved config (after `_base_` and the overrides) as YAML that loads back
as a config, followed by the total batch and the peak learning rate it gives, as comments, and exits.
"""

from __future__ import annotations

import json
import os

import yaml

from ..config_utils import load_yaml, to_dict
from ..engine import TrainConfig, train
from ..engine.loop import describe_batch


def register(sub) -> None:
    p = sub.add_parser("train", help="train a CAST model from a YAML config")
    p.add_argument("config", help="YAML file, e.g. configs/ek100.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.epochs=10 resume=auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config with the total batch and peak lr, and exit")
    p.set_defaults(func=run)


def resolved_config(cfg: TrainConfig, world: int) -> str:
    """The config as YAML, and what it means for `world` processes, as trailing comments."""
    total, peak = describe_batch(cfg, world)
    o = cfg.optim
    return (yaml.safe_dump(to_dict(cfg), sort_keys=False)
            + f"# total batch: {total} = {o.batch_size} per process x {world} processes x {o.update_freq} accumulated\n"
            + f"# peak lr: {peak:.6g} = base_lr {o.base_lr:g} x {total} / 256\n")


def run(args) -> int:
    cfg = load_yaml(TrainConfig, args.config, args.overrides)
    if args.print_config:
        print(resolved_config(cfg, int(os.environ.get("WORLD_SIZE", 1))), end="")
        return 0
    metrics = train(cfg, progress=not args.no_progress)
    print(json.dumps(metrics, indent=2))
    return 0
