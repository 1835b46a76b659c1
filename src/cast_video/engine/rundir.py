"""Run folders that describe themselves, and model folders that travel.

A run folder written by `cast-video train` holds `config.yaml` (the resolved config, absolute paths),
the split CSVs of `train --data`, `checkpoints/`, `log.jsonl`, `metrics.json` and `model/`. So
`cast-video eval RUN_DIR` finds its config, its best checkpoint and its validation split,
`cast-video predict VIDEO --model RUN_DIR` finds `model/`, and `train RUN_DIR/config.yaml resume=auto`
continues. `model/` carries every weight it needs (a frozen expert read from a local file is stored
whole; only hub ids stay references) and the class names of each head in `config.json`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import yaml

from ..config_utils import from_dict, to_dict
from ..errors import CheckpointError, ConfigError, WeightsError
from ..files import atomic_write_text
from ..models import CAST, CASTConfig
from .autoconfig import load_train_config
from .checkpoint import load_checkpoint
from .config import TrainConfig

RUN_FILES = ("checkpoints", "log.jsonl", "model", "metrics.json", "tensorboard")
_SPLITS = ("train", "val", "test")


def _model_meta(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == "cast-video" else None


def resolve_model_dir(source: str | os.PathLike) -> str:
    """A run folder stands for its `model/`; a model folder or a hub id for itself (`from_pretrained`
    names the folder inside that holds a model when this one does not)."""
    path = Path(source)
    if not path.is_dir() or _model_meta(path) is not None:
        return str(source)
    if _model_meta(path / "model") is not None:  # a run folder's own config.json is the training config
        return str(path / "model")
    if (path / "checkpoints").is_dir():
        raise WeightsError(f"{path}: a run folder without model/ yet (train writes it at the end); evaluate its "
                           f"checkpoints with `cast-video eval {path}`")
    return str(source)


def read_model_config(source: str | os.PathLike) -> CASTConfig:
    """The architecture of a saved model, without reading its weights."""
    from ..weights.io import HUB_ID, hub_snapshot

    where = resolve_model_dir(source)
    path = Path(where)
    if not path.exists():
        if not HUB_ID.fullmatch(where):
            raise WeightsError(f"{where}: no such model folder")
        path = hub_snapshot(where, ["config.json"])
    meta = _model_meta(path)
    if meta is None:
        raise WeightsError(f"{path}/config.json: not written by cast-video's save_pretrained")
    return from_dict(CASTConfig, meta["config"])


def prepare_output_dir(cfg: TrainConfig, overwrite: bool) -> None:
    """Refuse to train into the folder of an earlier run unless resuming it or told to replace it:
    the log would mix two runs and best.pt would be the old run's."""
    out = Path(cfg.output_dir)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if not existing or cfg.resume:
        return
    if not overwrite:
        raise ConfigError(f"output_dir {out} already holds a run ({', '.join(existing)}); continue it with "
                          "resume=auto, choose another output_dir=..., or pass --overwrite to replace it")
    for name in existing + [p.name for p in out.glob("eval_*")]:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def save_run_config(cfg: TrainConfig) -> Path:
    """`config.yaml` of the run, with absolute paths and without `resume`, so that
    `train RUN_DIR/config.yaml resume=auto` continues it from any working directory."""
    out = Path(cfg.output_dir).resolve()
    data = to_dict(cfg)
    data["output_dir"], data["resume"] = str(out), ""
    path = out / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def _rebase(cfg: TrainConfig, run_dir: Path) -> None:
    """A run folder that was moved: its own files (split CSVs, classes.txt) are read from where it is now."""
    old, new = Path(cfg.output_dir), run_dir.resolve()
    cfg.output_dir = str(new)
    if old == new:
        return

    def moved(p: str) -> str:
        return str(new / Path(p).relative_to(old)) if p and Path(p).is_relative_to(old) else p

    for split in _SPLITS:
        setattr(cfg.data, split, moved(getattr(cfg.data, split)))
    cfg.data.class_names = {t: moved(p) for t, p in cfg.data.class_names.items()}


def best_checkpoint(run_dir: str | os.PathLike) -> Path:
    ckpts = Path(run_dir) / "checkpoints"
    for name in ("best.pt", "last.pt"):
        if (ckpts / name).exists():
            return ckpts / name
    raise CheckpointError(f"{ckpts}: no best.pt or last.pt (has this run finished an epoch?)")


def load_run(target: str | os.PathLike, overrides: list[str] | None = None) -> TrainConfig:
    """The config of a run folder (its config.yaml) or of a YAML file."""
    path = Path(target)
    if not path.is_dir():
        return load_train_config(path, overrides)
    config = path / "config.yaml"
    if not config.exists():
        raise ConfigError(f"{path}: not a run folder (no config.yaml); pass a config file or a folder written by "
                          "`cast-video train`")
    cfg = load_train_config(config, overrides)
    _rebase(cfg, path)
    return cfg


def head_labels(config: CASTConfig) -> dict[str, list[str]]:
    return {h.name: list(h.labels) for h in config.heads if h.labels}


def export_model(model: CAST, directory: str | os.PathLike, class_names: dict[str, list[str]]) -> Path:
    """`save_pretrained` for a finished run: class names on the heads that have none, and every expert
    that came from a local file stored whole, so the folder works wherever it is copied."""
    import dataclasses

    from ..weights import save_pretrained

    heads = [h if h.labels or len(class_names.get(h.name, [])) != h.num_classes
             else dataclasses.replace(h, labels=list(class_names[h.name])) for h in model.config.heads]
    model.config = dataclasses.replace(model.config, heads=heads)
    sources = model.expert_sources
    model.expert_sources = {r: s for r, s in sources.items() if not Path(s["source"]).exists()}  # hub ids only
    try:
        return save_pretrained(model, directory, full=False)
    finally:
        model.expert_sources = sources


def epoch_line(epoch: int, epochs: int, losses: list[float], metrics: dict) -> str:
    """One line per epoch (also with --no-progress): mean training loss and the headline metrics."""
    loss = f"loss {sum(losses) / len(losses):.4f}" if losses else "no step"
    shown = [f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float) and k.endswith(("top1", "top5",
                                                                                                "harmonic_mean"))]
    return f"epoch {epoch}/{epochs}: {loss}" + (f"; val {', '.join(shown)}" if shown else "")


def summary(cfg: TrainConfig) -> list[str]:
    """The end of a run: the best epoch and its metrics, what is in the folder, and the exact commands."""
    out = Path(cfg.output_dir)
    q = shlex.quote(str(out))
    lines = []
    best = out / "checkpoints" / "best.pt"
    if best.exists():
        state = load_checkpoint(best)
        metrics = state["history"][-1] if state.get("history") else {}
        shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if k != "epoch" and isinstance(v, float))
        lines.append(f"best epoch {state['epoch']} of {cfg.optim.epochs} (checkpoints/best.pt): {shown}")
    else:
        lines.append("no validation split, so no best epoch; model/ is the last epoch's")
    files = [n for n in ("config.yaml", "classes.txt", "train.csv", "val.csv", "test.csv", "checkpoints", "model",
                         "log.jsonl", "metrics.json") if (out / n).exists()]
    lines += [f"run folder {out}: {', '.join(files)}",
              f"evaluate:  cast-video eval {q}",
              f"predict:   cast-video predict VIDEO --model {q}",
              f"continue:  cast-video train {shlex.quote(str(out / 'config.yaml'))} resume=auto "
              f"optim.epochs={cfg.optim.epochs * 2}"]
    return lines
