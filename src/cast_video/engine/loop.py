"""The training and evaluation loops: plain PyTorch, one file, read top to bottom.

`train(cfg)` builds the model, data and optimizer, resumes if asked, runs the epochs with
gradient accumulation, autocast, a per-step schedule and atomic checkpoints, and evaluates with
multi-view testing. `evaluate(...)` returns metrics and per-video scores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config_utils import ConfigError, to_dict
from ..data import build_dataset, build_gpu_augment, collate
from ..errors import NonFiniteLoss
from ..models import CAST, preset_config
from ..precision import autocast, prepare
from ..weights import load_experts, save_pretrained
from .checkpoint import CheckpointManager, load_checkpoint, rng_state, set_rng_state
from .config import TrainConfig
from .distributed import DistInfo, ResumableSampler, ShardSampler, gather_objects, init_distributed
from .metrics import classification_metrics
from .optim import build_optimizer, lr_at, set_lr


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: TrainConfig) -> CAST:
    torch.manual_seed(cfg.seed)  # identical fresh weights on every rank
    # The model records how its input is normalised (data.norm), so an expert with its own statistics can
    # convert exactly and `predict` normalises a saved model's input the same way.
    overrides = {"input_norm": cfg.data.norm, **cfg.model.overrides}
    config = preset_config(cfg.model.preset, overrides, ablation=cfg.model.ablation)
    if config.input_norm != cfg.data.norm:
        raise ConfigError(f"model.overrides.input_norm is {config.input_norm!r} but data.norm is {cfg.data.norm!r}; "
                          "leave input_norm out, it follows data.norm")
    if (cfg.data.mean or cfg.data.std) and (config.spatial.norm or config.temporal.norm):
        raise ConfigError("data.mean / data.std are custom, so an expert's own `norm` has no known input statistics "
                          "to convert from; use data.norm instead")
    model = CAST(config)
    if cfg.weights.spatial or cfg.weights.temporal:
        load_experts(model, spatial=cfg.weights.spatial or None, temporal=cfg.weights.temporal or None,
                           trusted=cfg.weights.trusted)
    return model


def as_dict(outputs, names: list[str]) -> dict[str, torch.Tensor]:
    return outputs if isinstance(outputs, dict) else {names[0]: outputs}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets (mixup, label smoothing). Ensemble logits (2, B, C): the sum
    of the members' losses, each trained on its own."""
    if logits.ndim == 3:
        return sum(soft_cross_entropy(member, target) for member in logits)
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax per view; an ensemble averages its members' probabilities."""
    p = logits.float().softmax(-1)
    return p.mean(0) if p.ndim == 3 else p


def _seed_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


def check_labels(dataset, heads: dict[str, int], split: str, need_labels: bool, main: bool = True) -> None:
    """Fail before the first step when the annotations and the heads disagree: a label a head cannot
    output would crash mid-run, and a head without labels would never learn."""
    samples = getattr(dataset, "samples", None)
    if not samples:
        return
    found = {t for s in samples for t in s.labels}
    missing = [t for t in heads if t not in found]
    if missing and (need_labels or found):
        raise ConfigError(f"data.{split}: no {' or '.join(missing)} labels for the model's head(s); the annotations "
                          f"give {sorted(found) or 'none'} (data.tasks names the task of single-label formats, "
                          "model.overrides.heads sets the heads)")
    for sample in samples:
        for task, label in sample.labels.items():
            if task in heads and not 0 <= label < heads[task]:
                raise ConfigError(f"{sample.where or sample.path}: {task} label {label} does not fit the model's "
                                  f"{task} head of {heads[task]} classes (model.overrides.heads)")
    names = getattr(dataset, "class_names", None) or {}
    for task, size in heads.items():
        if main and task in names and len(names[task]) != size:
            print(f"warning: data.{split} names {len(names[task])} {task} classes but the {task} head has {size}")


def train(cfg: TrainConfig, progress: bool = True, datasets: dict | None = None) -> dict:
    """Train (and evaluate each `eval_every_epochs`) as `cfg` says; returns the final metrics.

    `datasets` ({"train": ..., "val": ...}) replaces the datasets `cfg.data` describes, for data held in
    memory (the demo); they yield the data layer's sample dicts and have `set_epoch` and `class_names`.
    """
    device = pick_device(cfg.device)
    info = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(cfg.output_dir)
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    model = build_model(cfg).to(device)
    cfg = dataclasses.replace(cfg, precision=prepare(model, cfg.precision, device)[0])  # `auto` resolved once
    heads = {h.name: h.num_classes for h in model.config.heads}
    datasets = datasets or {}
    train_set = datasets["train"] if "train" in datasets else build_dataset(cfg.data, "train", seed=cfg.seed)
    check_labels(train_set, heads, "train", need_labels=True, main=info.main)
    # Built and checked once, before the first step, not at every evaluation.
    val_set = datasets["val"] if "val" in datasets else \
        build_dataset(cfg.data, "val", seed=cfg.seed) if cfg.data.val else None
    if val_set is not None:
        check_labels(val_set, heads, "val", need_labels=False, main=info.main)
    augment = build_gpu_augment(cfg.data, heads).to(device)
    micro_batch = cfg.optim.batch_size
    sampler = ResumableSampler(len(train_set), micro_batch, info, seed=cfg.seed)
    # Its own generator: a DataLoader draws a seed whenever an epoch starts, and from the global RNG that
    # would shift drop path's random stream after a mid-epoch resume. The clips' randomness comes from
    # (seed, epoch, position), not from this seed.
    loader = DataLoader(train_set, batch_size=micro_batch, sampler=sampler, num_workers=cfg.num_workers,
                        collate_fn=collate, drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    runner = DistributedDataParallel(model, device_ids=[info.local_rank] if device.type == "cuda" else None) \
        if info.world > 1 else model
    if cfg.compile:
        runner = torch.compile(runner)

    o = cfg.optim
    scale = micro_batch * info.world * o.update_freq / 256  # lr = base_lr x total batch / 256
    steps_per_epoch = sampler.num_batches // o.update_freq
    if steps_per_epoch == 0:
        raise ValueError(f"update_freq {o.update_freq} exceeds the {sampler.num_batches} batches of an epoch")
    total_steps = o.epochs * steps_per_epoch
    warmup_steps = round(o.warmup_epochs * steps_per_epoch)
    total_batch = micro_batch * info.world * o.update_freq
    if info.main:
        print(f"total batch {total_batch} = {micro_batch} per process x {info.world} processes x {o.update_freq} "
              f"accumulated; peak lr {o.base_lr * scale:.3g} (base {o.base_lr:g} x {total_batch}/256); "
              f"{steps_per_epoch} steps per epoch")
        if o.recipe_total_batch and o.recipe_total_batch != total_batch:
            print(f"warning: this recipe was tuned at total batch {o.recipe_total_batch}, not {total_batch}; "
                  "the lr is scaled linearly, but results can differ (set optim.update_freq to match)")

    ckpt = CheckpointManager(out_dir, cfg.keep_last)
    step, start_epoch, start_batch, best, history = 0, 0, 0, -math.inf, []
    resume_from = ckpt.latest() if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        rng = state["rng"]  # one state per process (drop path and dropout draw differently on each)
        set_rng_state(rng[info.rank] if len(rng) == info.world else rng[0])
        step, start_epoch, start_batch = state["step"], state["epoch"], state["batch"]
        best, history = state["best"], state["history"]
        if info.main:
            print(f"resumed from {resume_from} at epoch {start_epoch}, step {step}")

    def snapshot(epoch: int, batch: int, rng: list[dict]) -> dict:
        return {"model": {n: p.detach().cpu() for n, p in model.trainable_parameters()},
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
                "step": step, "epoch": epoch, "batch": batch, "best": best, "history": history,
                "config": to_dict(cfg)}

    log_file = open(out_dir / "log.jsonl", "a") if info.main else None  # closed in the finally below
    writer = _tensorboard(out_dir) if info.main else None
    metrics: dict = {}
    try:
        for epoch in range(start_epoch, o.epochs):
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch, start_batch)
            model.train()
            augment.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{o.epochs}", disable=not (progress and info.main),
                       total=len(loader), dynamic_ncols=True)
            seen, tic = 0, time.perf_counter()
            skipped, short = [], 0  # what the data layer replaced or padded, reported at the end of the epoch
            for batch_index, batch in enumerate(bar, start=start_batch):
                skipped += batch.get("skipped", [])
                short += batch.get("short", 0)
                micro = epoch * sampler.num_batches + batch_index
                video = batch["video"].to(device, non_blocking=True)
                labels = {t: y.to(device) for t, y in batch["labels"].items()}
                x, targets = augment(video, labels, generator=_seed_generator(device, cfg.seed + info.rank, micro))
                last_micro = (batch_index + 1) % o.update_freq == 0
                sync = nullcontext() if last_micro or info.world == 1 else runner.no_sync()
                with sync, autocast(cfg.precision, device):
                    outputs = as_dict(runner(x), list(heads))
                    loss = sum(soft_cross_entropy(outputs[t], targets[t]) for t in heads)
                bad = (~torch.isfinite(loss.detach())).float()
                if info.world > 1:  # every process stops together, none waits in an all-reduce
                    dist.all_reduce(bad)
                if bad.item():
                    if info.main:
                        ckpt.save(snapshot(epoch, batch_index - batch_index % o.update_freq, [rng_state()]), step)
                    raise NonFiniteLoss(f"loss is {loss.item()} in epoch {epoch + 1}, step {step}; the last good "
                                        f"state is in {ckpt.dir / 'last.pt'}")
                scaler.scale(loss / o.update_freq).backward()
                seen += video.shape[0] * info.world
                if not last_micro:
                    continue
                lr = lr_at(step, total_steps, warmup_steps, o.base_lr * scale, o.min_lr * scale, o.warmup_lr * scale)
                set_lr(optimizer, lr)
                if o.clip_grad:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for _, p in model.trainable_parameters()], o.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                rate = seen / (time.perf_counter() - tic)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
                if info.main and step % cfg.log_every_steps == 0:
                    _log(log_file, writer, {"step": step, "epoch": epoch, "loss": loss.item(), "lr": lr,
                                            "clips_per_s": rate})
                if cfg.save_every_steps and step % cfg.save_every_steps == 0:
                    rng = gather_objects(rng_state(), info)  # every process takes part
                    if info.main:
                        ckpt.save(snapshot(epoch, batch_index + 1, rng), step)
            start_batch = 0
            reports = gather_objects((skipped, short), info)  # each process met its own share of the data
            skipped, short = [r for part, _ in reports for r in part], sum(n for _, n in reports)
            if info.main and (skipped or short):
                for reason in skipped:
                    print(f"epoch {epoch + 1}: replaced an unreadable video: {reason}")
                _log(log_file, writer, {"step": step, "epoch": epoch + 1, "data/unreadable": len(skipped),
                                        "data/short_clips": short})
            is_last = epoch + 1 == o.epochs
            if val_set is not None and ((epoch + 1) % cfg.eval_every_epochs == 0 or is_last):
                metrics, _ = evaluate(model, cfg, "val", device, info, progress=progress, dataset=val_set)
                score = _headline(metrics)
                improved = score > best
                best = max(best, score)
                history.append({"epoch": epoch + 1, **metrics})
                if info.main:
                    _log(log_file, writer, {"step": step, "epoch": epoch + 1, **{f"val/{k}": v for k, v in
                                                                                 metrics.items()}})
            else:
                improved = False
            rng = gather_objects(rng_state(), info)
            if info.main:
                ckpt.save(snapshot(epoch + 1, 0, rng), step, best=improved)
    finally:
        if log_file:
            log_file.close()
        if writer:
            writer.close()
    if cfg.data.test or "test" in datasets:
        metrics["test"], _ = evaluate(model, cfg, "test", device, info, progress=progress, dataset=datasets.get("test"))
    if info.main:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        export = out_dir / "model"  # for `cast-video predict --model`: experts by reference when they have a source
        save_pretrained(model, export, full=not model.expert_sources)
        (export / "classes.json").write_text(json.dumps(train_set.class_names))
        _summary(history)
    return metrics


def _headline(metrics: dict) -> float:
    for key in ("action/top1", "harmonic_mean"):
        if key in metrics:
            return metrics[key]
    return next(v for k, v in metrics.items() if k.endswith("/top1"))


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _log(log_file, writer, record: dict) -> None:
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    if writer is not None:
        for k, v in record.items():
            if k not in ("step", "epoch") and isinstance(v, (int, float)):
                writer.add_scalar(k, v, record["step"])


def _summary(history: list[dict]) -> None:
    if not history:
        return
    keys = [k for k in history[-1] if k.endswith("top1") or k == "harmonic_mean"]
    print("epoch  " + "  ".join(f"{k:>14}" for k in keys))
    for row in history:
        print(f"{row['epoch']:>5}  " + "  ".join(f"{row[k]:>14.2f}" for k in keys))


@torch.no_grad()
def predict_views(model: CAST, video: torch.Tensor, augment, precision: str, device: torch.device,
                  names: list[str]) -> dict[str, torch.Tensor]:
    """(B, V, 3, 2T, H, W) uint8 views -> probabilities per task (B, C), averaged over the views."""
    b, v = video.shape[:2]
    x, _ = augment(video.to(device).flatten(0, 1))  # (B*V, 3, 2T, H, W)
    with autocast(precision, device):
        outputs = as_dict(model(x), names)
    return {t: probabilities(o).reshape(b, v, -1).mean(1).cpu() for t, o in outputs.items()}


def evaluate(model: CAST, cfg: TrainConfig, split: str, device: torch.device, info: DistInfo | None = None,
             progress: bool = True, dataset=None) -> tuple[dict, dict]:
    """Multi-view evaluation of a split (or of `dataset`): every sample counted once across ranks.
    Returns the metrics and the per-video results {"id", "scores": {task: (N, C)}, "labels": {task: (N,)}}."""
    info = info or DistInfo()
    if cfg.precision == "auto":  # `cast-video eval`; training passes its resolved precision
        cfg = dataclasses.replace(cfg, precision=prepare(model, cfg.precision, device)[0])
    heads = {h.name: h.num_classes for h in model.config.heads}
    if dataset is None:  # a dataset passed in was checked by its owner
        dataset = build_dataset(cfg.data, split, seed=cfg.seed)
        check_labels(dataset, heads, split, need_labels=False, main=info.main)
    augment = build_gpu_augment(cfg.data, heads).to(device).eval()
    loader = DataLoader(dataset, batch_size=max(1, cfg.optim.batch_size // 2), sampler=ShardSampler(len(dataset), info),
                        num_workers=cfg.num_workers, collate_fn=collate,
                        generator=torch.Generator())  # leaves the global RNG (drop path's stream) untouched
    model.eval()
    part = {"index": [], "id": [], "scores": {t: [] for t in heads}, "labels": {t: [] for t in heads}}
    for batch in tqdm(loader, desc=f"eval {split}", disable=not (progress and info.main), dynamic_ncols=True):
        probs = predict_views(model, batch["video"], augment, cfg.precision, device, list(heads))
        part["index"].extend(batch["index"].tolist())
        part["id"].extend(batch["id"])
        for t in heads:
            part["scores"][t].append(probs[t].numpy())
            if t in batch["labels"]:
                part["labels"][t].append(batch["labels"][t].numpy())
    merged = {"index": [], "id": [], "scores": {t: [] for t in heads}, "labels": {t: [] for t in heads}}
    for p in gather_objects(part, info):
        merged["index"].extend(p["index"])
        merged["id"].extend(p["id"])
        for t in heads:
            merged["scores"][t].extend(p["scores"][t])
            merged["labels"][t].extend(p["labels"][t])
    order = np.argsort(merged["index"], kind="stable")
    results = {"id": [merged["id"][i] for i in order],
               "scores": {t: np.concatenate(merged["scores"][t])[order] for t in heads},
               "labels": {t: np.concatenate(merged["labels"][t])[order] for t in heads if merged["labels"][t]}}
    scored = {t: results["scores"][t] for t in results["labels"]}
    metrics = classification_metrics(scored, results["labels"], cfg.groups) if scored else {}
    metrics["num_videos"] = len(results["id"])
    return metrics, results
