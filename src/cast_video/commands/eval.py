"""`cast-video eval CONFIG --checkpoint PATH`: multi-view evaluation with metrics, predictions and plots."""

from __future__ import annotations

import json
from pathlib import Path

from ..config_utils import load_yaml
from ..data import load_annotations
from ..engine import TrainConfig, build_model, evaluate
from ..engine.checkpoint import load_checkpoint
from ..engine.loop import pick_device
from ..engine.report import write_outputs
from ..errors import CheckpointError


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
    model = build_model(cfg)
    state = load_checkpoint(args.checkpoint)
    missing = model.load_state_dict(state["model"], strict=False)
    if missing.unexpected_keys:
        raise CheckpointError(f"{args.checkpoint}: unexpected keys {missing.unexpected_keys[:5]}")
    metrics, results = evaluate(model.to(device), cfg, args.split, device, progress=not args.no_progress)
    _, names = load_annotations(cfg.data, args.split)
    out = Path(args.out or Path(cfg.output_dir) / f"eval_{args.split}")
    for path in write_outputs(out, metrics, results, names):
        print(f"wrote {path}")
    print(json.dumps(metrics, indent=2))
    return 0
