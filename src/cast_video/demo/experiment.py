"""Table 1(a)/(b) in miniature: the same frozen experts, the same data and recipe, three ways to combine them.

Each method is a `cast_tiny` configuration (an ablation, or CAST itself) sized to the demo's clips and
trained by the library's own engine (`cast_video.engine.train`): only the adapters, the exchange
modules, the experts' last norms and the heads train.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data import DataConfig
from ..engine import ModelSpec, OptimConfig, TrainConfig, WeightsSpec, train
from ..files import atomic_write_json
from ..models import CAST, CASTConfig, preset_config
from ..models.counting import count_parameters
from .clips import ClipDataset
from .config import METHODS, DemoConfig


def method_config(name: str, cfg: DemoConfig) -> CASTConfig:
    """cast_tiny with the demo's frame count, image size, width and class counts."""
    return preset_config("cast_tiny", _overrides(cfg), ablation=METHODS[name][0])


def _overrides(cfg: DemoConfig) -> dict:
    return {"num_frames": cfg.synth.num_frames, "img_size": cfg.synth.img_size,
            "spatial.width": cfg.width, "temporal.width": cfg.width}


def train_config(name: str, cfg: DemoConfig, experts: dict[str, str], out_dir: str | Path) -> TrainConfig:
    """The engine's config for one method: the demo's recipe (no augmentation: a flip would swap the
    'left' and 'right' verbs; lr given per batch of 32, so base_lr is scaled back from the /256 rule)."""
    e, size = cfg.experiment, cfg.synth.img_size
    return TrainConfig(
        model=ModelSpec("cast_tiny", METHODS[name][0], _overrides(cfg)),
        weights=WeightsSpec(spatial=experts["spatial"], temporal=experts["temporal"]),
        data=DataConfig(format="epic_csv", num_frames=cfg.synth.num_frames, input_size=size, short_side=size,
                        test_clips=1, test_crops=1, flip=False, rand_augment="", color_jitter=0.0, mixup=0.0,
                        cutmix=0.0, label_smoothing=0.0),
        optim=OptimConfig(base_lr=e.lr * 256 / e.batch_size, min_lr=0.0, warmup_lr=0.0, weight_decay=e.weight_decay,
                          layer_decay=1.0, epochs=e.epochs, warmup_epochs=e.warmup_epochs, batch_size=e.batch_size),
        output_dir=str(out_dir), seed=cfg.seed, precision="fp32", device="cpu", num_workers=0, keep_last=1,
        log_every_steps=25, resume="auto",  # an interrupted demo continues where it stopped
    )


def _fractions(metrics: dict) -> dict[str, float]:
    return {"verb": metrics["verb/top1"] / 100, "noun": metrics["noun/top1"] / 100,
            "action": metrics["action/top1"] / 100, "harmonic_mean": metrics["harmonic_mean"] / 100}


def train_method(name: str, cfg: DemoConfig, splits: dict[str, ClipDataset], experts: dict[str, str],
                 out_dir: str | Path, progress: bool = True, log=None, writer=None) -> dict:
    """Train one method with the engine; returns its test metrics, also written to `out_dir/metrics.json`."""
    out = Path(out_dir)
    tcfg = train_config(name, cfg, experts, out)
    datasets = {"train": splits["train"], "val": splits["validation"], "test": splits["test"]}
    metrics = train(tcfg, progress=progress, datasets=datasets)
    per_epoch = {}  # the engine's log, one validation record per epoch (the last, if a resume repeated one)
    for line in (out / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val/verb/top1" in record:
            per_epoch[record["epoch"]] = _fractions({k.removeprefix("val/"): v for k, v in record.items()
                                                     if k.startswith("val/")})
    history = []
    for epoch, val in sorted(per_epoch.items()):
        history.append({"epoch": epoch, **{f"val_{k}": v for k, v in val.items()}})
        if writer is not None:
            for k, v in val.items():
                writer.add_scalar(f"{name}/val_{k}", v, epoch)
        if log is not None:
            log(f"{name} epoch {epoch}: validation verb {val['verb']:.1%} noun {val['noun']:.1%} "
                f"action {val['action']:.1%}")
    with torch.device("meta"):
        trainable = count_parameters(CAST(method_config(name, cfg)))["params_trainable"]
    result = {"method": name, "label": METHODS[name][1], "test": _fractions(metrics["test"]),
              "trainable_params": trainable, "history": history, "seed": cfg.seed}
    atomic_write_json(out / "result.json", result, indent=1)
    return result
