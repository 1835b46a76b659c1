"""`cast-video info PRESET`: parameters and GFLOPs per view, counted as the paper counts them."""

from __future__ import annotations

import json

from ..models import ABLATIONS, PRESETS, preset_config
from ..models.counting import model_summary


def register(sub) -> None:
    p = sub.add_parser("info", help="parameter and GFLOP counts of a preset")
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--ablation", choices=sorted(ABLATIONS), help="a row of Table 1 or Table 8")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. bcast_ratio=0.25")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = preset_config(args.preset, args.set, ablation=args.ablation)
    summary = model_summary(cfg)
    if args.json:
        print(json.dumps(summary))
        return 0
    name = args.preset + (f" ({args.ablation})" if args.ablation else "")
    print(f"{name}")
    print(f"  parameters, total      {summary['params_total']:>14,}")
    print(f"  parameters, trainable  {summary['params_trainable']:>14,}")
    print(f"  GFLOPs per view (MACs) {summary['gflops_per_view']:>14.1f}")
    return 0
