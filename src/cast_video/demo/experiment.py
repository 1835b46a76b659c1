"""Table 1(a)/(b) in miniature: the same frozen experts, the same data and recipe, three ways to combine them.

Each method is a `cast_tiny` configuration (an ablation, or CAST itself) sized to the demo's clips; only
the adapters, the exchange modules, the experts' last norms and the heads train.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..models import CAST, CASTConfig, preset_config
from .clips import ClipDataset
from .config import METHODS, DemoConfig


def method_config(name: str, cfg: DemoConfig) -> CASTConfig:
    """cast_tiny with the demo's frame count, image size, width and class counts."""
    ablation = METHODS[name][0]
    return preset_config("cast_tiny", {
        "num_frames": cfg.synth.num_frames, "img_size": cfg.synth.img_size,
        "spatial.width": cfg.width, "temporal.width": cfg.width,
    }, ablation=ablation)


def build_model(name: str, cfg: DemoConfig, spatial: str | Path, temporal: str | Path) -> CAST:
    model = CAST(method_config(name, cfg))
    model.spatial.load_state_dict(load_file(str(spatial)))
    model.temporal.load_state_dict(load_file(str(temporal)))
    return model


def _loss(out: dict, verb: torch.Tensor, noun: torch.Tensor) -> torch.Tensor:
    """Sum of the verb and noun cross-entropies; ensemble logits (2, B, C) sum over their members."""
    total = 0.0
    for logits, target in ((out["verb"], verb), (out["noun"], noun)):
        members = logits if logits.ndim == 3 else logits[None]
        total = total + sum(F.cross_entropy(m, target) for m in members)
    return total


def _probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1).mean(0) if logits.ndim == 3 else logits.softmax(-1)


@torch.no_grad()
def evaluate(model: CAST, data: ClipDataset, batch_size: int = 128) -> dict[str, float]:
    """Top-1 verb, noun and action (both right) accuracy, and the harmonic mean of verb and noun."""
    model.eval()
    verb_ok, noun_ok = [], []
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    for video, verb, noun in loader:
        out = model(video)
        verb_ok.append(_probs(out["verb"]).argmax(-1) == verb)
        noun_ok.append(_probs(out["noun"]).argmax(-1) == noun)
    v, n = torch.cat(verb_ok), torch.cat(noun_ok)
    verb_acc, noun_acc = v.float().mean().item(), n.float().mean().item()
    hm = 2 * verb_acc * noun_acc / (verb_acc + noun_acc) if verb_acc + noun_acc else 0.0
    return {"verb": verb_acc, "noun": noun_acc, "action": (v & n).float().mean().item(), "harmonic_mean": hm}


def train_method(name: str, cfg: DemoConfig, splits: dict[str, ClipDataset], experts: dict[str, str],
                 out_dir: str | Path, progress: bool = True, log=None, writer=None) -> dict:
    """Train one method; returns its test metrics, and writes them with a checkpoint to `out_dir`."""
    from tqdm import tqdm

    ecfg = cfg.experiment
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_model(name, cfg, experts["spatial"], experts["temporal"])
    named = model.trainable_parameters()
    groups = [{"params": [p for n, p in named if not model.no_weight_decay(n, p)], "weight_decay": ecfg.weight_decay},
              {"params": [p for n, p in named if model.no_weight_decay(n, p)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=ecfg.lr)
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=ecfg.batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    total_steps, warmup = ecfg.epochs * len(loader), ecfg.warmup_epochs * len(loader)
    step, history = 0, []
    for epoch in range(ecfg.epochs):
        model.train()
        t0, running, count = time.time(), 0.0, 0
        bar = tqdm(loader, desc=f"{name} {epoch + 1}/{ecfg.epochs}", disable=not progress, leave=False)
        for video, verb, noun in bar:
            lr = ecfg.lr * (step + 1) / warmup if step < warmup else \
                0.5 * ecfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _loss(model(video), verb, noun)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running, count = running + loss.item() * len(verb), count + len(verb)
            bar.set_postfix(loss=f"{running / count:.3f}")
        val = evaluate(model, splits["validation"])
        history.append({"epoch": epoch + 1, "loss": running / count, "seconds": round(time.time() - t0, 1),
                        **{f"val_{k}": v for k, v in val.items()}})
        if writer is not None:
            writer.add_scalar(f"{name}/train_loss", running / count, epoch + 1)
            for k, v in val.items():
                writer.add_scalar(f"{name}/val_{k}", v, epoch + 1)
        if log is not None:
            log(f"{name} epoch {epoch + 1}: loss {running / count:.3f}, validation verb {val['verb']:.1%} "
                f"noun {val['noun']:.1%} action {val['action']:.1%}")
    test = evaluate(model, splits["test"])
    trainable = sum(p.numel() for _, p in named)
    result = {"method": name, "label": METHODS[name][1], "test": test, "trainable_params": trainable,
              "history": history, "seed": cfg.seed}
    ckpt = out / "model.pt"
    torch.save({n: p.detach() for n, p in named}, ckpt.with_name("model.pt.tmp"))
    os.replace(ckpt.with_name("model.pt.tmp"), ckpt)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
