"""`cast-video eval RUN_DIR` (or CONFIG --checkpoint PATH): multi-view evaluation with metrics,
per-class results by name, predictions and plots.

Under torchrun (`torchrun --nproc_per_node=N -m cast_video eval ...`) the split is sharded over the
processes as in training, every video scored once, and rank 0 alone writes the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a run (its best checkpoint, its validation split) or a checkpoint",
                       description=__doc__)
    p.add_argument("run", metavar="RUN_DIR_OR_CONFIG", help="a run folder written by train, or a YAML config")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--checkpoint", help="a training checkpoint (.pt) (default: RUN_DIR/checkpoints/best.pt, "
                   "else last.pt)")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--out", help="output folder (default: OUTPUT_DIR/eval_SPLIT)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def per_class_lines(results: dict, names: dict[str, list[str]]) -> list[str]:
    """Accuracy of every class, by name, for tasks of up to 100 classes."""
    lines = []
    for task, labels in results["labels"].items():
        scores = results["scores"][task]
        if scores.shape[1] > 100:
            continue
        pred = scores.argmax(1)
        task_names = names.get(task, [])
        lines.append(f"{task}: per class (videos, top-1 %)")
        for c in range(scores.shape[1]):
            mask = labels == c
            if mask.any():
                name = task_names[c] if c < len(task_names) else str(c)
                lines.append(f"  {name:<30} {int(mask.sum()):>6} {100 * float(np.mean(pred[mask] == c)):>7.1f}")
    return lines


def run(args) -> int:
    from ..data import load_annotations
    from ..engine import build_model, evaluate
    from ..engine.autoconfig import check_shapes
    from ..engine.distributed import init_distributed
    from ..engine.loop import configure_device, pick_device
    from ..engine.report import write_outputs
    from ..engine.rundir import best_checkpoint, head_labels, load_run
    from ..engine.state import load_trained_weights
    from ..errors import ConfigError

    cfg = load_run(args.run, args.overrides)
    if not getattr(cfg.data, args.split):
        raise ConfigError(f"data.{args.split}: no annotation file given, so there is no {args.split} split to "
                          "evaluate")
    checkpoint = args.checkpoint or best_checkpoint(cfg.output_dir)
    device = pick_device(cfg.device)
    info = init_distributed(device)  # left by the CLI after printing
    configure_device(device, info)
    model = build_model(cfg)
    check_shapes(cfg, model.config)
    load_trained_weights(model, checkpoint)
    if info.main:
        print(f"evaluating {checkpoint} on data.{args.split} ({getattr(cfg.data, args.split)})")
    metrics, results = evaluate(model.to(device), cfg, args.split, device, info, progress=not args.no_progress)
    if not info.main:
        return 0
    names = {**load_annotations(cfg.data, args.split)[1], **head_labels(model.config)}
    out = Path(args.out or Path(cfg.output_dir) / f"eval_{args.split}")
    for path in write_outputs(out, metrics, results, names):
        print(f"wrote {path}")
    print("\n".join(per_class_lines(results, names)))
    print(json.dumps(metrics, indent=2))
    return 0
