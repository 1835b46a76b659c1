"""The demo from start to end, as resumable stages in one run folder.

    data      synthesise the mp4 files and EK100-format CSVs         videos/, annotations/
    decode    read every clip back through the decoder, once           cache/
    spatial   CLIP-architecture expert on still digits                experts/spatial.safetensors
    temporal  VideoMAE pre-training on the unlabeled training clips    experts/temporal/expert.safetensors
    <method>  frozen experts + adapters / late fusion / CAST           models/<method>/
    report    table, results.json, results.png, results.md

A stage that finished leaves `stages/<name>.json` (its time and result); running again skips it. The
run folder remembers its config, and refuses to mix results of different configs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..config_utils import ConfigError, to_dict
from ..data import DataConfig
from ..errors import DataError
from ..files import atomic_write, atomic_write_json
from ..models.experts import ExpertConfig
from ..pretrain import PretrainConfig, pretrain
from ..weights.io import load_pickle_safely
from .clips import ClipDataset, read_split
from .config import DemoConfig
from .experiment import method_config, train_method
from .report import write_report
from .spatial import train_spatial_expert
from .synth import SPLITS, write_moving_digits

logger = logging.getLogger(__name__)


class Run:
    """A run folder: stage markers, a log file and stage times."""

    def __init__(self, run_dir: str | Path, cfg: DemoConfig, progress: bool):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "stages").mkdir(exist_ok=True)
        self.progress = progress
        self.times: dict[str, tuple[float, bool]] = {}
        saved = self.dir / "config.json"
        current = to_dict(cfg)
        if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(current)):
            raise ConfigError(f"{self.dir} holds a run with another config ({saved}); use another --run-dir "
                              "or delete it")
        atomic_write_json(saved, current, indent=1)

    def log(self, message: str) -> None:
        """To the `cast_video` log (the command line shows it) and to the run's log.txt."""
        logger.info(message)
        with open(self.dir / "log.txt", "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def stage(self, name: str, fn):
        """Run `fn()` unless the stage finished before; its result must be JSON."""
        marker = self.dir / "stages" / f"{name}.json"
        if marker.exists():
            done = json.loads(marker.read_text())
            self.times[name] = (done["seconds"], True)
            self.log(f"[{name}] reused ({done['seconds']:.0f} s when it ran)")
            return done["result"]
        self.log(f"[{name}] ...")
        t0 = time.time()
        result = fn()
        seconds = time.time() - t0
        atomic_write_json(marker, {"seconds": seconds, "result": result}, indent=1)
        self.times[name] = (seconds, False)
        self.log(f"[{name}] done in {seconds:.0f} s")
        return result


def _expert_config(cfg: DemoConfig, arch: str) -> ExpertConfig:
    """The expert exactly as the demo's CAST builds it, so its weights load without conversion."""
    model_cfg = method_config("cast", cfg)
    return model_cfg.spatial if arch == "clip" else model_cfg.temporal


def run_demo(cfg: DemoConfig, run_dir: str | Path = "runs/demo", progress: bool = True) -> dict:
    """Everything; returns the results summary (also in run_dir/results.json)."""
    t_start = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = Run(run_dir, cfg, progress)
    root = run.dir / "data"
    writer = _tensorboard(run.dir / "tensorboard")

    run.stage("data", lambda: {k: len(v) for k, v in
                               write_moving_digits(root, cfg.synth, cfg.clips, cfg.seed, progress).items()})

    def decode():
        (run.dir / "cache").mkdir(exist_ok=True)
        for split in SPLITS:
            data = read_split(root, split, cfg.synth.num_frames, progress)
            atomic_write(run.dir / "cache" / f"{split}.pt", lambda f, data=data: torch.save(data, f))
        return {"cache": str(run.dir / "cache")}

    run.stage("decode", decode)
    splits = {s: ClipDataset(_read_cache(run.dir / "cache" / f"{s}.pt"), views=s != "train") for s in SPLITS}

    experts_dir = run.dir / "experts"
    spatial = run.stage("spatial", lambda: {k: v for k, v in train_spatial_expert(
        _expert_config(cfg, "clip"), cfg.synth.img_size, cfg.spatial, cfg.synth, cfg.seed, experts_dir,
        progress, run.log).items() if k != "history"})

    def temporal():
        t = cfg.temporal
        pcfg = PretrainConfig(
            expert=_expert_config(cfg, "videomae"), num_frames=cfg.synth.num_frames, img_size=cfg.synth.img_size,
            mask_ratio=t.mask_ratio, decoder_width=t.decoder_width, decoder_depth=t.decoder_depth,
            decoder_heads=t.decoder_heads, epochs=t.epochs, warmup_epochs=t.warmup_epochs,
            batch_size=t.batch_size, lr=t.lr, num_workers=0, seed=cfg.seed, output_dir=str(experts_dir / "temporal"),
            data=DataConfig(format="unlabeled", flip=False),  # no flip: 'move left' must not become 'move right'
        )
        result = pretrain(pcfg, dataset=splits["train"], progress=progress)  # labels unused
        run.log(f"VideoMAE reconstruction loss {result['loss'][0]:.3f} -> {result['loss'][-1]:.3f}")
        if writer is not None:
            for epoch, loss in enumerate(result["loss"], start=1):
                writer.add_scalar("temporal_pretrain/loss", loss, epoch)
        return result

    temporal_result = run.stage("temporal", temporal)
    experts = {"spatial": spatial["expert"], "temporal": temporal_result["expert"]}

    results = []
    for name in cfg.experiment.methods:
        results.append(run.stage(name, lambda name=name: train_method(
            name, cfg, splits, experts, run.dir / "models" / name, progress, run.log, writer)))
    if writer is not None:
        writer.close()

    extra = {
        "spatial expert, validation still accuracy": f"{100 * spatial['val_still_acc']:.1f}%",
        "VideoMAE loss, first -> last epoch": f"{temporal_result['loss'][0]:.3f} -> {temporal_result['loss'][-1]:.3f}",
        "clips (train / validation / test)": " / ".join(str(cfg.clips[s]) for s in SPLITS),
        "threads": torch.get_num_threads(),
    }
    text = run.stage("report", lambda: write_report(results, run.dir, cfg.seed, extra))
    total = time.time() - t_start
    run.log("\nStage times:")
    for name, (seconds, reused) in run.times.items():
        run.log(f"  {name:<22} {seconds:7.1f} s" + ("  (reused)" if reused else ""))
    run.log(f"  {'total (this run)':<22} {total:7.1f} s\n")
    run.log(text)
    run.log(f"\nArtefacts in {run.dir}/: results.md, results.json, results.png, log.txt, tensorboard/")
    summary = json.loads((run.dir / "results.json").read_text())
    summary["total_seconds"] = total
    return summary


def _read_cache(path: Path) -> dict[str, torch.Tensor]:
    """A decoded split written by the decode stage: tensors only, so it is read with weights_only=True
    (a run folder someone sent must not run code) and checked to hold what a split holds."""
    data = load_pickle_safely(path, hint="")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), torch.Tensor) for k in ("clips", "verb", "noun")):
        marker = path.parent.parent / "stages" / "decode.json"
        raise DataError(f"{path}: not a decoded split (clips, verb, noun); delete it and {marker} to decode again")
    return data


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional; the log and results files carry the same numbers
        return None
    return SummaryWriter(str(path))
