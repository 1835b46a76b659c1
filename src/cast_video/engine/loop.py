"""The training engine: a task turns a batch into a loss; one loop does everything else.

Read top to bottom: `ClassificationTask` (CAST fine-tuning: augment, forward, soft cross-entropy),
`train_step` (one optimizer step over an accumulation group), `train_epoch` (the groups of an epoch),
`evaluate` (multi-view testing, sharded over ranks) and `train` (setup, epochs, checkpoints). The state
that changes is a `TrainState` (engine/state.py), saved and loaded whole for an exact resume.

Accumulation rule: an epoch's micro-batches form groups of `optim.update_freq`, counted from the epoch's
first micro-batch; when update_freq does not divide the epoch, the last group is partial and is stepped
with its own size (loss / group size), so every micro-batch counts in exactly one step of its own epoch
and `.grad` is empty at every epoch start. An epoch has ceil(micro-batches / update_freq) steps.

Host syncs: a micro-batch only queues work on the device; the loss and the finiteness flag of a group
are gathered over ranks and read once, at the end of the group (one read per optimizer step).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config_utils import ConfigError, apply_overrides, to_dict
from ..data import build_dataset, build_gpu_augment, collate
from ..errors import NonFiniteLoss
from ..files import atomic_write_json
from ..models import CAST, preset_config
from ..precision import autocast, prepare
from ..weights import load_experts, paired_config
from .autoconfig import check_run, load_init
from .checkpoint import CheckpointManager, load_checkpoint, rng_state
from .config import TrainConfig
from .distributed import (
    DistInfo,
    ResumableSampler,
    ShardSampler,
    barrier,
    close_distributed,
    gather_objects,
    gather_tensor,
    init_distributed,
)
from .metrics import classification_metrics
from .optim import WarmupCosine, apply_schedule, build_optimizer, param_groups
from .rundir import epoch_line, export_model
from .state import TrainState

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_device(device: torch.device, info: DistInfo) -> None:
    """One GPU per process, and TF32 matmuls (training, evaluation and prediction alike)."""
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def build_model(cfg: TrainConfig) -> CAST:
    torch.manual_seed(cfg.seed)  # identical fresh weights on every rank
    # The model records how its input is normalised (data.norm), so an expert with its own statistics can
    # convert exactly and `predict` normalises a saved model's input the same way.
    overrides = {"input_norm": cfg.data.norm, **cfg.model.overrides}
    config = preset_config(cfg.model.preset, ablation=cfg.model.ablation)
    if cfg.model.from_experts:
        if not (cfg.weights.spatial and cfg.weights.temporal):
            raise ConfigError("model.from_experts reads the experts from weights.spatial and weights.temporal")
        config = paired_config(config, cfg.weights.spatial, cfg.weights.temporal)
    config = apply_overrides(config, overrides)
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
    if cfg.weights.init:  # a saved model to start from (`train --init`)
        load_init(model, cfg.weights.init)
    return model


def stream_seed(seed: int, *keys: int) -> int:
    """The seed of the random stream named by (seed, *keys), e.g. (seed, rank, micro-batch): distinct
    names give unrelated streams, so rank 1 of seed s never replays rank 0 of seed s + 1."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets (mixup, label smoothing), in fp32."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The model's prediction for one head: softmax of its logits (an ensemble's head logits are already
    the log of its members' mean probability, see `CAST`)."""
    return logits.float().softmax(-1)


# --- the task --------------------------------------------------------------------------------------
class Task(Protocol):
    """What the engine trains: a collated batch -> a scalar loss on the device (not read on the host).
    The engine owns everything around it: accumulation, precision, optimizer, checkpoints, DDP, logging."""

    def loss(self, runner: nn.Module, batch: dict, epoch: int, micro: int) -> torch.Tensor: ...

    def train(self, mode: bool = True): ...


class ClassificationTask(nn.Module):
    """CAST fine-tuning: the batched augmentation on the device, the model, and the soft cross-entropy
    of every trained output (`CASTConfig.trained_outputs`) against its head's targets, summed."""

    def __init__(self, augment: nn.Module, trained: dict[str, str], precision: str, device: torch.device):
        super().__init__()
        self.augment, self.trained, self.precision, self.device = augment, trained, precision, device

    def loss(self, runner: nn.Module, batch: dict, epoch: int, micro: int) -> torch.Tensor:
        video = batch["video"].to(self.device, non_blocking=True)
        labels = {t: y.to(self.device, non_blocking=True) for t, y in batch["labels"].items()}
        # every augmentation draw keyed by (seed, epoch, dataset index): N processes augment as one
        keys = batch["index"].to(self.device, non_blocking=True)
        x, targets = self.augment(video, labels, keys=keys, epoch=epoch)
        with autocast(self.precision, self.device):
            outputs = runner(x)
            return sum(soft_cross_entropy(outputs[key], targets[head]) for key, head in self.trained.items())


# --- the loop --------------------------------------------------------------------------------------
@dataclass
class Run:
    """The fixed parts of a run, built once by `setup`; `train_epoch` and `train_step` read them."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    runner: nn.Module  # the model as called in training: DDP-wrapped and/or compiled
    evaluator: nn.Module  # the model as called in evaluation: compiled when cfg.compile
    task: Task
    dataset: object
    sampler: ResumableSampler
    loader: DataLoader
    ckpt: CheckpointManager
    progress: bool = True
    val_set: object = None
    val_loader: DataLoader | None = None  # its workers persist between evaluations
    last_save: tuple[int, Path] | None = None  # (step, file) of the newest checkpoint of this run
    log_file: object = None
    writer: object = None
    owns_group: bool = False
    recipe: object = None  # the `Recipe` that built the run

    def log(self, record: dict) -> None:
        if self.log_file is None:
            return
        self.log_file.write(json.dumps(record) + "\n")
        self.log_file.flush()
        if self.writer is not None:
            for k, v in record.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, v, record["step"])

    def close(self) -> None:
        for handle in (self.log_file, self.writer):
            if handle is not None:
                handle.close()
        if self.owns_group:
            close_distributed()


def forward_backward(state: TrainState, run: Run, batches: Iterable[dict], epoch: int, first: int,
                     size: int) -> torch.Tensor:
    """Backward of each micro-batch's loss / `size`, gradients all-reduced at the group's last only.
    Returns (2,) on the device, not read: [sum of the micro-batch losses, how many were not finite]."""
    tally = torch.zeros(2, device=run.device)
    for j, batch in enumerate(batches):
        last = j == size - 1
        with nullcontext() if last or run.info.world == 1 else run.runner.no_sync():
            loss = run.task.loss(run.runner, batch, epoch, first + j)
            state.scaler.scale(loss / size).backward()
        loss = loss.detach().float()
        tally += torch.stack([loss, (~loss.isfinite()).float()])
    return tally


def train_step(state: TrainState, run: Run, batches: Iterable[dict], first: int, size: int,
               rng_before: dict) -> float | None:
    """One optimizer step over the group of `size` micro-batches starting at `first`; returns the
    group's mean loss over all ranks, or None when a non-finite loss skipped it (see `_nonfinite`)."""
    tally = forward_backward(state, run, batches, state.epoch, first, size)
    per_rank = gather_tensor(tally, run.info).tolist()  # the one device-to-host read of the step
    bad = [(rank, value) for rank, (value, count) in enumerate(per_rank) if count]
    if bad:
        _nonfinite(state, run, bad, rng_before)
        return None
    state.skipped_in_a_row = 0
    o = run.cfg.optim
    apply_schedule(state.optimizer, state.schedule, state.step)
    if o.clip_grad:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in state.model.parameters() if p.requires_grad], o.clip_grad)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return sum(value for value, _ in per_rank) / (size * run.info.world)


def _nonfinite(state: TrainState, run: Run, bad: list[tuple[int, float]], rng_before: dict) -> None:
    """A NaN/inf loss on some rank: drop the group's gradients; with `on_nonfinite: skip` count it and
    go on (stopping after `max_nonfinite` in a row); else save the state from before the group (every
    rank's RNG as it was then; an existing checkpoint of that state is kept, never overwritten), wait
    for the save on every rank, and raise on every rank."""
    state.optimizer.zero_grad(set_to_none=True)
    where = "; ".join(f"rank {rank}: loss is {value}" for rank, value in bad)
    o = run.cfg.optim
    if o.on_nonfinite == "skip" and state.skipped_in_a_row < o.max_nonfinite:
        state.skipped += 1
        state.skipped_in_a_row += 1
        state.step += 1  # the step's slot in the schedule passes unused, so the schedule stays on the data
        if run.info.main:
            log.warning("epoch %d, step %d skipped (%s); %d skipped so far", state.epoch + 1, state.step, where,
                        state.skipped)
        return
    if run.last_save is not None and run.last_save[0] == state.step:
        path = run.last_save[1]  # the state before this group is already saved there
    else:
        path = save(state, run, rng_state_of_ranks=gather_objects(rng_before, run.info))
    limit = f" after {state.skipped_in_a_row} skipped in a row" if o.on_nonfinite == "skip" else ""
    raise NonFiniteLoss(f"{where} in epoch {state.epoch + 1}, step {state.step + 1}{limit}; the state before it "
                        f"(step {state.step}) is in {path} (resume={path}, e.g. with a lower optim.base_lr)")


def save(state: TrainState, run: Run, best: bool = False, rng_state_of_ranks: list[dict] | None = None) -> Path:
    """Checkpoint the state (rank 0 writes, once) with every rank's RNG; every rank waits for the file."""
    rng = rng_state_of_ranks or gather_objects(rng_state(), run.info)
    path = run.ckpt.path(state.step)
    if run.info.main:
        run.ckpt.save(state.state_dict(rng, to_dict(run.cfg)), state.step, best=best)
    barrier(run.info)
    run.last_save = (state.step, path)
    return path


def _counted(batches: Iterator[dict], report: dict) -> Iterator[dict]:
    """The batches, noting what the data layer replaced (unreadable videos) or padded (short clips)."""
    for batch in batches:
        report["skipped"] += batch.get("skipped", [])
        report["short"] += batch.get("short", 0)
        yield batch


def train_epoch(state: TrainState, run: Run) -> dict:
    """The accumulation groups of `state.epoch` from micro-batch `state.batch` on; returns what the data
    layer replaced or padded on this rank."""
    cfg, info = run.cfg, run.info
    uf, total = cfg.optim.update_freq, run.sampler.num_batches
    run.dataset.set_epoch(state.epoch)
    run.sampler.set_epoch(state.epoch, state.batch)
    state.model.train()
    run.task.train()
    bar = tqdm(run.loader, desc=f"epoch {state.epoch + 1}/{cfg.optim.epochs}", disable=not (run.progress and info.main),
               total=len(run.loader), dynamic_ncols=True)
    batches, report = iter(bar), {"skipped": [], "short": 0, "losses": []}
    tic, seen = time.perf_counter(), 0
    for first in range(state.batch, total, uf):
        size = min(uf, total - first)
        loss = train_step(state, run, _counted(islice(batches, size), report), first, size, rng_state())
        state.batch = first + size
        seen += size * cfg.optim.batch_size * info.world
        if loss is not None:
            report["losses"].append(loss)  # for the one line per epoch
            state.epoch_loss, state.epoch_steps = state.epoch_loss + loss, state.epoch_steps + 1
            _after_step(state, run, loss, seen / (time.perf_counter() - tic), bar)
    bar.close()
    return report


def _after_step(state: TrainState, run: Run, loss: float, rate: float, bar) -> None:
    cfg = run.cfg
    lr = state.schedule(state.step - 1)
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
    if state.step % cfg.log_every_steps == 0:
        run.log({"step": state.step, "epoch": state.epoch, "loss": loss, "lr": lr, "clips_per_s": rate})
    if cfg.save_every_steps and state.step % cfg.save_every_steps == 0:
        save(state, run)


def end_epoch(state: TrainState, run: Run, report: dict) -> None:
    """Report the data, evaluate when due, and checkpoint the start of the next epoch."""
    cfg, info = run.cfg, run.info
    reports = gather_objects(report, info)  # each process met its own share of the data
    skipped, short = [r for part in reports for r in part["skipped"]], sum(part["short"] for part in reports)
    if info.main and (skipped or short):
        for reason in skipped:
            log.warning("epoch %d: replaced an unreadable video: %s", state.epoch + 1, reason)
        run.log({"step": state.step, "epoch": state.epoch + 1, "data/unreadable": len(skipped),
                 "data/short_clips": short})
    done = state.epoch + 1
    improved, metrics = False, {}
    if run.val_set is not None and (done % cfg.eval_every_epochs == 0 or done == cfg.optim.epochs):
        metrics, _ = evaluate(run.evaluator, cfg, "val", run.device, info, progress=run.progress,
                              dataset=run.val_set, loader=run.val_loader)
        score = _headline(metrics)
        improved, state.best = score > state.best, max(state.best, score)
        state.history.append({"epoch": done, **metrics})
        run.log({"step": state.step, "epoch": done, **{f"val/{k}": v for k, v in metrics.items()}})
    state.end_epoch_loss()
    state.epoch, state.batch = done, 0
    save(state, run, best=improved)
    if info.main:  # also with --no-progress
        log.info("%s", epoch_line(done, cfg.optim.epochs, report["losses"], metrics))


def _headline(metrics: dict) -> float:
    for key in ("action/top1", "harmonic_mean"):
        if key in metrics:
            return metrics[key]
    return next(v for k, v in metrics.items() if k.endswith("/top1"))


# --- setup -----------------------------------------------------------------------------------------
def describe_batch(cfg: TrainConfig, world: int) -> tuple[int, float]:
    """The total batch (per process x processes x accumulation) and the peak lr it gives (x total / 256)."""
    total = cfg.optim.batch_size * world * cfg.optim.update_freq
    return total, cfg.optim.base_lr * total / 256


def build_schedule(cfg: TrainConfig, world: int, steps_per_epoch: int) -> WarmupCosine:
    o = cfg.optim
    _, peak = describe_batch(cfg, world)
    scale = peak / o.base_lr
    return WarmupCosine(o.epochs * steps_per_epoch, round(o.warmup_epochs * steps_per_epoch), peak,
                        o.min_lr * scale, o.warmup_lr * scale)


def _datasets(cfg: TrainConfig, given: dict, heads: dict[str, int], main: bool):
    train_set = given["train"] if "train" in given else build_dataset(cfg.data, "train", seed=cfg.seed)
    check_labels(train_set, heads, "train", need_labels=True, main=main)
    # Built and checked once, before the first step, not at every evaluation.
    val_set = given["val"] if "val" in given else None
    if val_set is None and cfg.data.val:
        val_set = build_dataset(cfg.data, "val", seed=cfg.seed)
    if val_set is not None:
        check_labels(val_set, heads, "val", need_labels=False, main=main)
    return train_set, val_set


def _loader(dataset, cfg: TrainConfig, sampler, device: torch.device, batch_size: int, drop_last: bool) -> DataLoader:
    # Its own generator: a DataLoader draws a seed whenever an epoch starts, and from the global RNG that
    # would shift drop path's random stream after a mid-epoch resume. The clips' randomness comes from
    # (seed, epoch, index), not from this seed.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      collate_fn=collate, drop_last=drop_last, pin_memory=device.type == "cuda",
                      persistent_workers=cfg.num_workers > 0, generator=torch.Generator().manual_seed(cfg.seed))


def _runners(model: CAST, cfg: TrainConfig, info: DistInfo, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The model as trained (DDP: gradients written straight into the all-reduce buckets; the only buffer
    is a constant position table, so buffers are not rebroadcast) and as evaluated (compiled or not)."""
    runner = model
    if info.world > 1:
        runner = DistributedDataParallel(model, device_ids=[info.local_rank] if device.type == "cuda" else None,
                                         gradient_as_bucket_view=True, broadcast_buffers=False)
    if cfg.compile:
        return torch.compile(runner), torch.compile(model)
    return runner, model


def _announce(cfg: TrainConfig, info: DistInfo, steps_per_epoch: int, schedule) -> None:
    if not info.main:
        return
    o = cfg.optim
    total = o.batch_size * info.world * o.update_freq
    warmup, steps = schedule.warmup_steps, schedule.total_steps
    log.info("total batch %d = %d per process x %d processes x %d accumulated; peak lr %.3g; %d steps per epoch; "
             "warm-up %d of %d steps", total, o.batch_size, info.world, o.update_freq, schedule.peak,
             steps_per_epoch, warmup, steps)
    if warmup * 2 > steps:
        log.warning("the warm-up (%d steps) is over half of the %d steps: the lr barely reaches its peak; scale it "
                    "with the run (e.g. 10%% of the epochs)", warmup, steps)
    if o.recipe_total_batch and o.recipe_total_batch != total:
        log.warning("this recipe was tuned at total batch %d, not %d; the lr is scaled linearly, but results can "
                    "differ (set optim.update_freq to match)", o.recipe_total_batch, total)


class Recipe(Protocol):
    """What a kind of training brings to the engine: its model, data, parameter groups, task and final
    files. `setup` and `train` do the rest the same way for each (device, precision, DDP, optimizer,
    schedule, checkpoints, resume, logging). `FineTuning` is CAST's; `pretrain.Pretraining` is VideoMAE's;
    `demo.spatial.StillPretraining` is the demo's image-trained spatial expert.
    The config is a `TrainConfig` or one with the same engine fields (`optim`, `output_dir`, `seed`, ...)."""

    def build_model(self, cfg) -> nn.Module: ...

    def precision(self, model: nn.Module, cfg, device: torch.device) -> str: ...

    def datasets(self, cfg, given: dict, model: nn.Module, main: bool) -> tuple[object, object]: ...

    def param_groups(self, model: nn.Module, cfg) -> list[dict]: ...

    def schedule(self, cfg, world: int, steps_per_epoch: int): ...

    def task(self, model: nn.Module, cfg, device: torch.device, info: DistInfo) -> Task: ...

    def finish(self, state: TrainState, run: Run, given: dict) -> dict: ...


class FineTuning:
    """CAST fine-tuning: `build_model`, layer-decayed groups, `ClassificationTask`, test metrics and the
    exported model."""

    def build_model(self, cfg: TrainConfig) -> CAST:
        return build_model(cfg)

    def precision(self, model: CAST, cfg: TrainConfig, device: torch.device) -> str:
        precision = prepare(model, cfg.precision, device)[0]
        log.info("backward: memory %s, frozen_backward %s (model.overrides; docs/benchmarks.md, \"Training memory\")",
                 model.config.memory, model.config.frozen_backward)
        return precision

    def datasets(self, cfg: TrainConfig, given: dict, model: CAST, main: bool):
        train_set, val_set = _datasets(cfg, given, _heads(model), main)
        world = dist.get_world_size() if dist.is_initialized() else 1
        check_run(cfg, model.config, len(train_set), world)  # shapes and batch, before the first step
        return train_set, val_set

    def param_groups(self, model: CAST, cfg: TrainConfig) -> list[dict]:
        return param_groups(model, cfg.optim)

    def schedule(self, cfg: TrainConfig, world: int, steps_per_epoch: int) -> WarmupCosine:
        return build_schedule(cfg, world, steps_per_epoch)

    def task(self, model: CAST, cfg: TrainConfig, device: torch.device, info: DistInfo) -> Task:
        augment = build_gpu_augment(cfg.data, _heads(model), seed=cfg.seed).to(device)
        return ClassificationTask(augment, model.config.trained_outputs(), cfg.precision, device)

    def finish(self, state: TrainState, run: Run, given: dict) -> dict:
        return finish(state, run, given)


def _heads(model: CAST) -> dict[str, int]:
    return {h.name: h.num_classes for h in model.config.heads}


def setup(cfg: TrainConfig, progress: bool, given: dict, recipe: Recipe | None = None) -> tuple[Run, TrainState]:
    """Everything a run needs, on this rank: model, data, optimizer, schedule, resumed state."""
    recipe = recipe or FineTuning()
    device = pick_device(cfg.device)
    owns_group = not dist.is_initialized()
    info = init_distributed(device)
    configure_device(device, info)
    out_dir = Path(cfg.output_dir)
    if info.main:
        atomic_write_json(out_dir / "config.json", to_dict(cfg))
    model = recipe.build_model(cfg).to(device)
    cfg = dataclasses.replace(cfg, precision=recipe.precision(model, cfg, device))  # `auto` resolved once
    torch.manual_seed(stream_seed(cfg.seed, info.rank))  # drop path and dropout draw differently on each rank
    train_set, val_set = recipe.datasets(cfg, given, model, info.main)
    sampler = ResumableSampler(len(train_set), cfg.optim.batch_size, info, seed=cfg.seed)
    loader = _loader(train_set, cfg, sampler, device, cfg.optim.batch_size, drop_last=True)
    steps_per_epoch = math.ceil(sampler.num_batches / cfg.optim.update_freq)
    state = TrainState(model, build_optimizer(model, cfg.optim, device.type == "cuda",
                                                recipe.param_groups(model, cfg)),
                       torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16"),
                       recipe.schedule(cfg, info.world, steps_per_epoch))
    runner, evaluator = _runners(model, cfg, info, device)
    run = Run(cfg, info, device, runner, evaluator, recipe.task(model, cfg, device, info), train_set, sampler, loader,
              CheckpointManager(out_dir, cfg.keep_last), progress, val_set, owns_group=owns_group and info.world > 1,
              recipe=recipe)
    if val_set is not None:
        run.val_loader = eval_loader(val_set, cfg, info, device, persistent=True)
    _announce(cfg, info, steps_per_epoch, state.schedule)
    _resume(state, run)
    if info.main:
        run.log_file = open(out_dir / "log.jsonl", "a")  # closed by run.close()
        run.writer = _tensorboard(out_dir)
    return run, state


def _resume(state: TrainState, run: Run) -> None:
    cfg = run.cfg
    source = run.ckpt.latest() if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if source is None:
        return
    state.load_state_dict(load_checkpoint(source), run.info, str(source))
    run.last_save = (state.step, source)
    if run.info.main:
        log.info("resumed from %s at epoch %d, step %d", source, state.epoch, state.step)


def train(cfg: TrainConfig, progress: bool = True, datasets: dict | None = None, recipe: Recipe | None = None) -> dict:
    """Train (and evaluate each `eval_every_epochs`) as `cfg` says; returns the final metrics (what the
    recipe's `finish` returns; `FineTuning` by default).

    `datasets` ({"train": ..., "val": ..., "test": ...}) replaces the datasets `cfg.data` describes, for
    data held in memory (the demo); they yield the data layer's sample dicts and have `set_epoch` and
    `class_names`.
    """
    datasets = datasets or {}
    run, state = setup(cfg, progress, datasets, recipe)
    try:
        while state.epoch < cfg.optim.epochs:
            report = train_epoch(state, run)
            end_epoch(state, run, report)
        return run.recipe.finish(state, run, datasets)
    finally:
        run.close()


def finish(state: TrainState, run: Run, datasets: dict) -> dict:
    """Test-set evaluation, `metrics.json` and the exported model (for `cast-video predict --model`)."""
    cfg = run.cfg
    metrics = dict(state.history[-1]) if state.history else {}
    metrics.pop("epoch", None)
    if cfg.data.test or "test" in datasets:
        metrics["test"], _ = evaluate(run.evaluator, cfg, "test", run.device, run.info, progress=run.progress,
                                      dataset=datasets.get("test"))
    if run.info.main:
        out_dir = Path(cfg.output_dir)
        atomic_write_json(out_dir / "metrics.json", metrics)
        export_model(state.model, out_dir / "model", run.dataset.class_names)  # class names; experts of local files
        _summary(state.history)
    barrier(run.info)
    return metrics


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _summary(history: list[dict]) -> None:
    if not history:
        return
    keys = [k for k in history[-1] if k.endswith("top1") or k == "harmonic_mean"]
    lines = ["epoch  " + "  ".join(f"{k:>14}" for k in keys)]
    lines += [f"{row['epoch']:>5}  " + "  ".join(f"{row[k]:>14.2f}" for k in keys) for row in history]
    log.info("\n".join(lines))


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
    bad = next(((s, t, y) for s in samples for t, y in s.labels.items() if t in heads and not 0 <= y < heads[t]), None)
    if bad is not None:
        sample, task, label = bad
        raise ConfigError(f"{sample.where or sample.path}: {task} label {label} does not fit the model's "
                          f"{task} head of {heads[task]} classes (model.overrides.heads)")
    names = getattr(dataset, "class_names", None) or {}
    for task, size in heads.items():
        if main and task in names and len(names[task]) != size:
            log.warning("data.%s names %d %s classes but the %s head has %d", split, len(names[task]), task, task, size)


# --- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def predict_views(model: nn.Module, video: torch.Tensor, augment, precision: str, device: torch.device,
                  names: list[str]) -> dict[str, torch.Tensor]:
    """(B, V, 3, 2T, H, W) uint8 views -> probabilities per head (B, C), averaged over the views."""
    b, v = video.shape[:2]
    x, _ = augment(video.to(device, non_blocking=True).flatten(0, 1))  # (B*V, 3, 2T, H, W)
    with autocast(precision, device):
        outputs = model(x)
    return {t: probabilities(outputs[t]).reshape(b, v, -1).mean(1).cpu() for t in names}  # (B, V, C) -> (B, C)


def _merge(parts: list[dict], heads: list[str]) -> dict:
    """Every rank's share of the results, in dataset order."""
    index = [i for p in parts for i in p["index"]]
    ids = [i for p in parts for i in p["id"]]
    order = np.argsort(index, kind="stable")
    scores = {t: np.concatenate([s for p in parts for s in p["scores"][t]])[order] for t in heads}
    labels = {t: np.concatenate([y for p in parts for y in p["labels"][t]])[order] for t in heads
              if any(p["labels"][t] for p in parts)}
    return {"id": [ids[i] for i in order], "scores": scores, "labels": labels}


def eval_loader(dataset, cfg: TrainConfig, info: DistInfo, device: torch.device, persistent: bool = False):
    """This rank's shard of `dataset` in batches of half the training batch (each sample has all its views).
    `persistent` keeps the workers between evaluations (the validation set of a run)."""
    return DataLoader(dataset, batch_size=max(1, cfg.optim.batch_size // 2), sampler=ShardSampler(len(dataset), info),
                      num_workers=cfg.num_workers, collate_fn=collate, pin_memory=device.type == "cuda",
                      persistent_workers=persistent and cfg.num_workers > 0,
                      generator=torch.Generator())  # leaves the global RNG (drop path's stream) untouched


def evaluate(model: nn.Module, cfg: TrainConfig, split: str, device: torch.device, info: DistInfo | None = None,
             progress: bool = True, dataset=None, loader: DataLoader | None = None) -> tuple[dict, dict]:
    """Multi-view evaluation of a split (or of `dataset`, through `loader` if given): every sample counted
    once across ranks. Returns the metrics and the per-video results
    {"id", "scores": {task: (N, C)}, "labels": {task: (N,)}}."""
    info = info or DistInfo()
    if cfg.precision == "auto":  # `cast-video eval`; training passes its resolved precision
        cfg = dataclasses.replace(cfg, precision=prepare(model, cfg.precision, device)[0])
    heads = {h.name: h.num_classes for h in model.config.heads}
    if dataset is None:  # a dataset passed in was checked by its owner
        dataset = build_dataset(cfg.data, split, seed=cfg.seed)
        check_labels(dataset, heads, split, need_labels=False, main=info.main)
    augment = build_gpu_augment(cfg.data, heads).to(device).eval()
    loader = loader or eval_loader(dataset, cfg, info, device)
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
    results = _merge(gather_objects(part, info), list(heads))
    scored = {t: results["scores"][t] for t in results["labels"]}
    metrics = classification_metrics(scored, results["labels"], cfg.groups) if scored else {}
    metrics["num_videos"] = len(results["id"])
    return metrics, results
