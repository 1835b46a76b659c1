"""`cast-video demo`: the moving-digits benchmark, end to end on a CPU (see docs/DEMO.md)."""

from __future__ import annotations

from ..config_utils import apply_overrides, load_yaml


def register(sub) -> None:
    p = sub.add_parser("demo", help="moving-digits benchmark: pre-train two experts, compare CAST with baselines")
    p.add_argument("--config", help="YAML of DemoConfig fields (default: the built-in demo, configs/demo/demo.yaml)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides, e.g. seed=1 experiment.epochs=4")
    p.add_argument("--run-dir", default="runs/demo", help="run folder; finished stages in it are reused")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo.config import DemoConfig
    from ..demo.pipeline import run_demo

    cfg = load_yaml(DemoConfig, args.config, args.set) if args.config else apply_overrides(DemoConfig(), args.set)
    run_demo(cfg, args.run_dir, progress=not args.no_progress)
    return 0
