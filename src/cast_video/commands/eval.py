"""`cast-video eval CONFIG --checkpoint PATH`: multi-view evaluation with metrics, predictions and plots.

Under torchrun (`torchrun --nproc_per_node=N -m cast_video eval ...`) the split is sharded over the
processes as in training, every video scored once, and rank 0 alone writes the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.distributed as dist

from ..config_utils import load_yaml
from ..data import load_annotations
from ..engine import TrainConfig, build_model, evaluate
from ..engine.distributed import close_distributed, init_distributed
from ..engine.loop import configure_device, pick_device
from ..engine.report import write_outputs
from ..engine.state import load_trained_weights


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a split")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint (.pt) of this config")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--out", help="output folder (default: OUTPUT_DIR/eval_SPLIT)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_yaml(TrainConfig, args.config, args.overrides)
    device = pick_device(cfg.device)
    owns_group = not dist.is_initialized()
    info = init_distributed(device)
    try:
        configure_device(device, info)
        model = build_model(cfg)
        load_trained_weights(model, args.checkpoint)
        metrics, results = evaluate(model.to(device), cfg, args.split, device, info, progress=not args.no_progress)
        if not info.main:
            return 0
        _, names = load_annotations(cfg.data, args.split)
        out = Path(args.out or Path(cfg.output_dir) / f"eval_{args.split}")
        for path in write_outputs(out, metrics, results, names):
            print(f"wrote {path}")
        print(json.dumps(metrics, indent=2))
        return 0
    finally:
        if owns_group:
            close_distributed()
