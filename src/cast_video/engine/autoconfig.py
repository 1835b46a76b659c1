"""A whole training config from a folder of videos: `cast-video train --data DIR`.

`own_data_config` builds the `TrainConfig` a user would otherwise write: the head's size and class
names come from the data, the architecture from a preset (or from the model given to `--init`), and
every value that depends on the data's size (batch, epochs, warm-up, learning rate) is chosen for it
with a reason that the command prints. `KEY=VALUE` overrides win over every choice, and the choices
that depend on an overridden value follow it (five epochs get half an epoch of warm-up, not five).

The checks here run before any work: data that cannot fill a batch, clips whose shape the model does
not take, and frozen experts that would stay random (a run that can only stay at chance).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config_utils import config_from, parse_override, read_config, set_typed, to_dict
from ..data.folders import FolderData, holdout, write_splits
from ..errors import ConfigError, DataError
from ..models import CAST, CASTConfig, preset_config
from .config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_PRESET = "cast_b16_k400"  # the paper's model for trimmed clips of one action each
TASK = "action"
TARGET_STEPS = 300  # optimizer steps a small-data run aims at
PAPER_LR, PAPER_BATCH = 1e-3, 256  # Table 4: base lr 1e-3 at a total batch of 256

WHERE_WEIGHTS = ("give real expert weights: --spatial ViT-B-16.pt (OpenAI CLIP; or openai/clip-vit-base-patch16) "
                 "and --temporal a VideoMAE checkpoint (or MCG-NJU/videomae-base), i.e. weights.spatial / "
                 "weights.temporal; or --init a saved cast-video model; or train the experts too with "
                 "model.overrides.freeze_experts=false; or weights.allow_random=true to run anyway")


@dataclass
class Choice:
    key: str
    value: Any
    reason: str


@dataclass
class OwnDataPlan:
    """The resolved config, why each value was chosen, and the data it was chosen for."""

    config: TrainConfig
    choices: list[Choice] = field(default_factory=list)
    data: FolderData | None = None
    splits: dict[str, list] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"  {c.key} = {c.value}: {c.reason}" for c in self.choices]


def _get(raw: dict, key: str) -> Any:
    node = raw
    for part in key.split("."):
        node = node[part]
    return node


def _model_config(raw: dict) -> CASTConfig:
    m = raw["model"]
    return preset_config(m["preset"], m.get("overrides") or {}, ablation=m.get("ablation"))


def follow_model(raw: dict) -> None:
    """The data's frames and crop size follow the model unless the config sets them: a `cast_tiny`
    config must not read 16 frames of 224 px because those are `DataConfig`'s defaults."""
    model = raw.setdefault("model", {})
    model.setdefault("preset", TrainConfig().model.preset)
    cfg = _model_config(raw)
    data = raw.setdefault("data", {})
    data.setdefault("num_frames", cfg.num_frames)
    data.setdefault("input_size", cfg.img_size)
    data.setdefault("short_side", data["input_size"])


def load_train_config(path: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """A training config from YAML and overrides, with the data's sizes following the model."""
    raw = read_config(TrainConfig, path, overrides)
    follow_model(raw)
    return config_from(TrainConfig, raw, path)


def _head(classes: list[str], source: str = "fused") -> dict:
    return {"name": TASK, "num_classes": len(classes), "source": source, "labels": list(classes)}


def _init_overrides(init: str, classes: list[str]) -> dict:
    """Every field of the `--init` model's config, with a head for this data: the architecture (and the
    input normalisation it was trained with) is that model's, whatever the preset."""
    from .rundir import read_model_config

    cfg = to_dict(read_model_config(init))
    source = cfg["heads"][0]["source"] if len(cfg["heads"]) == 1 else "fused"
    cfg["heads"] = [_head(classes, source)]
    return cfg


def _splits(data: FolderData, fraction: float, seed: int) -> dict[str, list]:
    splits = dict(data.splits)
    if "val" not in splits:
        splits["train"], splits["val"] = holdout(splits["train"], fraction, seed, TASK)
    return splits


def _base(data: FolderData, preset: str | None, init: str | None, spatial: str | None, temporal: str | None) -> dict:
    raw = to_dict(TrainConfig())
    raw["model"]["preset"] = preset or DEFAULT_PRESET
    raw["model"]["overrides"] = _init_overrides(init, data.classes) if init else {"heads": [_head(data.classes)]}
    if init:
        raw["data"]["norm"] = raw["model"]["overrides"].pop("input_norm")
        raw["weights"]["init"] = init
    raw["weights"]["spatial"], raw["weights"]["temporal"] = spatial or "", temporal or ""
    raw["data"].update(format="generic", tasks=[TASK], root="")
    raw["data"]["val_fraction"] = 0.1
    return raw


def own_data_config(data: FolderData, preset: str | None = None, init: str | None = None,
                    spatial: str | None = None, temporal: str | None = None,
                    overrides: list[str] | None = None) -> OwnDataPlan:
    """The plan for training on `data`; nothing is written (see `write_plan`)."""
    if preset and init:
        raise ConfigError("--preset and --init both give the architecture; pass one of them")
    raw = _base(data, preset, init, spatial, temporal)
    given: set[str] = set()
    for key, value in map(parse_override, overrides or []):
        set_typed(raw, TrainConfig, key, value)
        given.add(key)
    plan = OwnDataPlan(config=TrainConfig(), data=data)
    plan.splits = _splits(data, _get(raw, "data.val_fraction"), _get(raw, "seed"))
    _choose(raw, given, plan, len(plan.splits["train"]), init)
    plan.config = config_from(TrainConfig, raw, "--data")
    return plan


def main_process() -> bool:
    """Rank 0 under torchrun (RANK), or a plain process: the one that checks and writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes of the run: torchrun's WORLD_SIZE, known before the process group starts."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _choose(raw: dict, given: set[str], plan: OwnDataPlan, n_train: int, init: str | None) -> None:
    """Fill every data-dependent value the user did not set, recording why."""

    def pick(key: str, value: Any, reason: str) -> Any:
        if key in given:
            plan.choices.append(Choice(key, _get(raw, key), "set on the command line"))
            return _get(raw, key)
        set_typed(raw, TrainConfig, key, value)
        plan.choices.append(Choice(key, value, reason))
        return value

    data = plan.data
    model = _model_config(raw)
    arch = f"the --init model {init}" if init else f"preset {raw['model']['preset']}"
    plan.choices.append(Choice("classes", len(data.classes), f"the class folders of {data.source} "
                                                             f"({', '.join(data.classes[:8])}"
                                                             f"{', ...' if len(data.classes) > 8 else ''})"))
    sizes = ", ".join(f"{s} {len(v)}" for s, v in plan.splits.items())
    fraction = _get(raw, "data.val_fraction")
    held = "" if "val" in data.splits else f", val held out per class (data.val_fraction {fraction})"
    plan.choices.append(Choice("clips", sizes, f"{data.layout}{held}"))
    pick("output_dir", f"runs/{data.source.stem}", "named after the data")
    pick("data.num_frames", model.num_frames, f"the frames {arch} takes")
    size = pick("data.input_size", model.img_size, f"the image size {arch} takes")
    pick("data.short_side", size, "test views: short side resized to the crop size")
    world = world_size()
    per_process = max(1, n_train // (4 * world))
    batch = pick("optim.batch_size", min(_get(raw, "optim.batch_size"), per_process),
                 f"at most {_get(raw, 'optim.batch_size')} per process, and small enough for 4 steps per epoch "
                 f"on {n_train} training clips")
    total = batch * world * _get(raw, "optim.update_freq")
    steps = max(1, n_train // total)
    epochs = pick("optim.epochs", min(50, max(10, math.ceil(TARGET_STEPS / steps))),
                  f"about {TARGET_STEPS} optimizer steps at {steps} per epoch, between 10 and 50 epochs")
    pick("optim.warmup_epochs", round(min(5.0, 0.1 * epochs), 2),
         f"10% of the {epochs} epochs (the paper's 5 at most), so warm-up scales with the run")
    lr = PAPER_LR * math.sqrt(total / PAPER_BATCH)
    pick("optim.base_lr", float(f"{lr * PAPER_BATCH / total:.4g}"),
         f"peak lr {lr:.3g} at total batch {total} = {batch} x {world} process(es) x "
         f"{_get(raw, 'optim.update_freq')} accumulated: the paper's {PAPER_LR:g} per {PAPER_BATCH} clips scaled "
         f"by the square root of the batch, the rule for Adam (the linear rule's "
         f"{PAPER_LR * total / PAPER_BATCH:.2g} barely moves a short run); base_lr is what the loop scales by /256")
    pick("num_workers", min(4, (os.cpu_count() or 1) // 2), "half the CPU cores, at most 4")
    aug = raw["data"]
    plan.choices.append(Choice("augmentation", "on", f"RandAugment {aug['rand_augment'] or 'off'}, mixup "
                                                      f"{aug['mixup']}, cutmix {aug['cutmix']}, label smoothing "
                                                      f"{aug['label_smoothing']}, flip {aug['flip']} (set "
                                                      "data.flip=false if left and right are different classes)"))


def write_plan(plan: OwnDataPlan) -> TrainConfig:
    """Write the split CSVs into the run folder and point the config's data at them."""
    out = Path(plan.config.output_dir).resolve()
    paths = write_splits(plan.splits, plan.data.classes, out, TASK)
    cfg = plan.config
    cfg.output_dir = str(out)
    cfg.data.train, cfg.data.val = str(paths["train"]), str(paths["val"])
    cfg.data.test = str(paths.get("test", ""))
    cfg.data.class_names = {TASK: str(paths["classes"])}
    return cfg


def random_experts(cfg: TrainConfig) -> list[str]:
    """The frozen experts this config leaves at their random initialisation."""
    if cfg.weights.init:
        return []
    model = preset_config(cfg.model.preset, cfg.model.overrides, ablation=cfg.model.ablation)
    if not model.freeze_experts:
        return []
    return [role for role in ("spatial", "temporal") if not getattr(cfg.weights, role)]


def check_expert_weights(cfg: TrainConfig) -> None:
    """Refuse a run whose frozen experts are random: only the adapters and heads would train, on
    features of random networks, and the model would stay near chance whatever else is tuned."""
    roles = random_experts(cfg)
    if roles and not cfg.weights.allow_random:
        raise ConfigError(f"weights.{' and weights.'.join(roles)}: not given, so the frozen {' and '.join(roles)} "
                          f"expert{'s' if len(roles) > 1 else ''} would stay random and the model near chance; "
                          + WHERE_WEIGHTS)


def check_batch(cfg: TrainConfig, num_train: int, world: int) -> None:
    need = cfg.optim.batch_size * world * cfg.optim.update_freq
    if num_train < need:
        raise DataError(f"data.train: {num_train} training clips, fewer than one step needs (optim.batch_size "
                        f"{cfg.optim.batch_size} x {world} process(es) x optim.update_freq {cfg.optim.update_freq}); "
                        f"lower optim.batch_size to at most {max(1, num_train // (world * cfg.optim.update_freq))}")


def check_shapes(cfg: TrainConfig, model: CASTConfig) -> None:
    """Every clip shape the model cannot take, named by key, before the first step (the experts' own
    grids are checked by `CASTConfig`)."""
    d = cfg.data
    if d.num_frames != model.num_frames:
        raise ConfigError(f"data.num_frames is {d.num_frames} but the model takes {model.num_frames} frames; leave "
                          "data.num_frames out (it follows the model) or set model.overrides.num_frames")
    if d.input_size != model.img_size:
        raise ConfigError(f"data.input_size is {d.input_size} but the model takes {model.img_size} px; leave "
                          "data.input_size out (it follows the model) or set model.overrides.img_size")
    if model.num_frames % model.temporal.tubelet_size:
        raise ConfigError(f"model num_frames {model.num_frames} is not a multiple of the temporal expert's tubelet "
                          f"size {model.temporal.tubelet_size}")


def check_run(cfg: TrainConfig, model: CASTConfig, num_train: int, world: int) -> None:
    """The checks of a training run once its data is known, before the first step."""
    check_shapes(cfg, model)
    check_batch(cfg, num_train, world)


def _same_head(head, init_heads: dict) -> bool:
    other = init_heads.get(head.name)
    return other is not None and other.num_classes == head.num_classes and bool(head.labels) and \
        other.labels == head.labels


def load_init(model: CAST, source: str) -> None:
    """Start from a saved cast-video model: experts, B-CAST, adapters and norms are copied; a head whose
    classes differ (count or names) is re-created, and said so."""
    from ..weights import from_pretrained
    from .rundir import resolve_model_dir

    init = from_pretrained(resolve_model_dir(source))
    init_heads = {h.name: h for h in init.config.heads}
    keep = {h.name for h in model.config.heads if _same_head(h, init_heads)}
    for h in model.config.heads:
        if h.name not in keep:
            was = init_heads.get(h.name)
            before = "has no such head" if was is None else f"has {was.num_classes} classes" + (
                " with other names" if was.num_classes == h.num_classes else "")
            log.warning("--init %s: head %r re-created for %d classes (the model's %s); experts, B-CAST and "
                        "adapters kept", source, h.name, h.num_classes, before)
    state = {k: v for k, v in init.state_dict().items()
             if k.split(".", 1)[0] not in ("heads", "heads_t") or k.split(".")[1] in keep}
    ours = model.state_dict()
    wrong = [k for k, v in state.items() if k not in ours or ours[k].shape != v.shape]
    if wrong:
        raise ConfigError(f"--init {source}: the model's weights do not fit this architecture ({wrong[:4]})")
    model.load_state_dict(state, strict=False)
    model.expert_sources = dict(init.expert_sources)
