"""`cast-video info PRESET`: the expert pair, their grids, parameters and GFLOPs per view, counted as the
paper counts them. `--spatial DIR_OR_ID --temporal DIR_OR_ID` reads the experts from their own configs."""

from __future__ import annotations

import json

from ..config_utils import apply_overrides
from ..errors import ConfigError
from ..models import ABLATIONS, PRESETS, preset_config
from ..models.counting import model_summary
from ..weights import paired_config


def register(sub) -> None:
    p = sub.add_parser("info", help="expert pair, parameter and GFLOP counts of a preset")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--ablation", choices=sorted(ABLATIONS), help="a row of Table 1 or Table 8")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. bcast_ratio=0.25")
    p.add_argument("--spatial", help="transformers folder or hub id: the spatial expert, read from its config.json")
    p.add_argument("--temporal", help="the same for the temporal expert (both or neither)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _expert_line(role: str, e, input_size: int) -> str:
    side = e.img_size or input_size
    grid = side // e.patch_size
    prefix = f", {e.num_prefix} prefix" if e.num_prefix else ""
    return (f"  {role:<9}{e.arch} {e.width}x{e.depth}, patch {e.patch_size} at {side} px -> {grid}x{grid} grid"
            f"{prefix}, pixels {e.norm or 'input'}")


def run(args) -> int:
    if bool(args.spatial) != bool(args.temporal):
        raise ConfigError("cast-video info: --spatial and --temporal go together")
    cfg = preset_config(args.preset, ablation=args.ablation)
    if args.spatial:  # the preset gives the heads, frames and crop; the experts come from their checkpoints
        cfg = paired_config(cfg, args.spatial, args.temporal)
    cfg = apply_overrides(cfg, args.set) if args.set else cfg
    summary = model_summary(cfg)
    summary["params_frozen"] = summary["params_total"] - summary["params_trainable"]
    if args.json:
        print(json.dumps({**summary, "spatial": cfg.spatial.arch, "temporal": cfg.temporal.arch}))
        return 0
    print(args.preset + (f" ({args.ablation})" if args.ablation else ""))
    print(_expert_line("spatial", cfg.spatial, cfg.img_size))
    print(_expert_line("temporal", cfg.temporal, cfg.img_size))
    print(f"  clip: {cfg.num_frames} frames of {cfg.img_size} px")
    print(f"  parameters, total      {summary['params_total']:>14,}")
    print(f"  parameters, trainable  {summary['params_trainable']:>14,}")
    print(f"  parameters, frozen     {summary['params_frozen']:>14,}")
    print(f"  GFLOPs per view (MACs) {summary['gflops_per_view']:>14.1f}")
    return 0
