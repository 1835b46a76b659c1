"""`cast-video train`: train a classifier on a folder of your videos, or from a YAML config.

`--print-config` prints the resolved config (after `_base_`, the data's choices and the overrides) as YAML
that loads back as a config, followed by the total batch and the peak learning rate it gives, as
comments, and exits.
"""

from __future__ import annotations

import argparse

import yaml

from ..config_utils import to_dict
from ..engine import TrainConfig
from ..engine.loop import describe_batch
from ..errors import ConfigError

EPILOG = """examples:
  cast-video train --data my_videos --spatial ViT-B-16.pt --temporal videomae_b.pth
  cast-video train --data my_videos --preset cast_tiny model.overrides.freeze_experts=false   # a CPU try
  cast-video train --data my_videos --init runs/other/model optim.epochs=20
  cast-video train configs/k400.yaml data.root=/data/k400 output_dir=runs/k400
  cast-video train runs/my_videos/config.yaml resume=auto                               # continue a run
  torchrun --nproc_per_node=8 -m cast_video train configs/ek100.yaml                    # many GPUs

--data DIR: one folder per class (videos or frame folders), or train/ val/ (test/) folders each holding
the class folders, or an annotation file (path,label CSV; K400 CSV; 'path label' list). Classes are the
sorted folder names; without val/, a stratified 10% per class is held out (data.val_fraction). Every
value chosen for the data is printed with its reason; KEY=VALUE overrides any of them."""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on your videos (--data DIR) or from a YAML config",
                       description=__doc__ + "\n\nThe run folder gets config.yaml, the split CSVs, checkpoints/, "
                       "log.jsonl, metrics.json and model/ (for `predict --model RUN_DIR`).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="a YAML config, e.g. configs/k400.yaml or RUN_DIR/config.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optim.epochs=10 resume=auto")
    p.add_argument("--data", metavar="DIR", help="a folder of class folders (or train/ val/ folders, or an "
                   "annotation file): the classes and the config come from it")
    p.add_argument("--preset", help="the architecture (default cast_b16_k400 with a head of your classes; "
                   "cast_tiny for a quick CPU try)")
    p.add_argument("--spatial", help="spatial expert weights: a file, a folder or a hub id (weights.spatial)")
    p.add_argument("--temporal", help="temporal expert weights: a file, a folder or a hub id (weights.temporal)")
    p.add_argument("--init", metavar="MODEL", help="start from a saved cast-video model (a model or run folder); "
                   "its heads are re-created when the classes differ")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in output_dir (without "
                   "resume, reusing one is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; one line per epoch")
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


def _from_data(args, overrides: list[str], show: bool = True):
    from ..data.folders import scan_data
    from ..engine.autoconfig import own_data_config

    plan = own_data_config(scan_data(args.data), args.preset, args.init, args.spatial, args.temporal,
                           overrides)
    if not show:  # --print-config: the YAML alone
        return plan
    print(f"training on {args.data} ({plan.data.layout}); values chosen for this data:")
    for line in plan.lines():
        print(line)
    for skipped in plan.data.skipped:
        print(f"  skipped (not a video or frame folder): {skipped}")
    return plan


def _from_config(args, overrides: list[str]):
    from ..engine.autoconfig import load_train_config

    if not args.config:
        raise ConfigError("give a YAML config or --data DIR (see `cast-video train --help`)")
    given = {"model.preset": args.preset, "weights.spatial": args.spatial, "weights.temporal": args.temporal,
             "weights.init": args.init}
    return load_train_config(args.config, [f"{k}={v}" for k, v in given.items() if v] + overrides)


def run(args) -> int:
    from ..engine import train
    from ..engine.autoconfig import check_batch, check_expert_weights, main_process, world_size, write_plan
    from ..engine.distributed import init_distributed
    from ..engine.loop import pick_device
    from ..engine.rundir import prepare_output_dir, save_run_config, summary

    overrides = list(args.overrides)
    if args.data and args.config:
        if "=" not in args.config:
            raise ConfigError(f"pass a config ({args.config}) or --data, not both")
        overrides.insert(0, args.config)  # argparse read the first override as the config
    if args.print_config:
        cfg = _from_data(args, overrides, show=False).config if args.data else _from_config(args, overrides)
        print(resolved_config(cfg, world_size()), end="")
        return 0
    if args.data:
        plan = _from_data(args, overrides)
        check_expert_weights(plan.config)
        check_batch(plan.config, len(plan.splits["train"]), world_size())
        cfg = plan.config
    else:
        cfg = _from_config(args, overrides)
        check_expert_weights(cfg)
    main = main_process()  # under torchrun, rank 0 alone checks and writes the run folder
    if main:
        prepare_output_dir(cfg, args.overwrite)
    if args.data:
        cfg = write_plan(plan)  # every rank reads the same split files (written atomically, identical)
    if main:
        save_run_config(cfg)
    init_distributed(pick_device(cfg.device))  # held by the command: the CLI leaves it after printing
    train(cfg, progress=not args.no_progress)
    if main:
        print("\n".join(summary(cfg)))
    return 0
