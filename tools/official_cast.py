"""The official CAST model file, imported from a clone you made (KHU-VLL/CAST is CC-BY-NC: its code
is never copied into cast-video), for the parity check and the benchmark rows against it.

    git clone https://github.com/KHU-VLL/CAST /tmp/CAST

The file imports four timm helpers; timm cannot be installed beside the CPU torch used here, so they
are supplied with plain equivalents (timm's drop_path: a per-sample Bernoulli mask, scaled).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

from torch import nn

# The official EK100 script's `unfreeze_block` list (run_bidirection_compo.py): a parameter trains when
# its name holds one of these; 44,784,781 trainable parameters in the composition model.
TRAINABLE = ("cross", "clip_space_time_pos", "clip_time_pos", "vmae_time_pos", "Adapter", "ln_post",
             "vmae_fc_norm", "last_proj", "head")


def _drop_path(x, drop_prob: float = 0.0, training: bool = False):
    if not drop_prob or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def load_official(repo: Path) -> types.ModuleType:
    """`models/bidir_modeling_crossattn.py` of the clone at `repo`, as a module."""
    layers = types.ModuleType("timm.models.layers")
    layers.drop_path = _drop_path
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0: nn.init.trunc_normal_(t, mean, std, a, b)
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    sys.modules.update({"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                        "timm.models.layers": layers, "timm.models.registry": registry})
    if not (repo / "models" / "bidir_modeling_crossattn.py").is_file():
        raise SystemExit(f"{repo}: no models/bidir_modeling_crossattn.py (give a clone of KHU-VLL/CAST)")
    sys.path.insert(0, str(repo / "models"))
    import bidir_modeling_crossattn

    return bidir_modeling_crossattn


def official_ek100_for_training(repo: Path, drop_path_rate: float = 0.2) -> nn.Module:
    """The official EK100 composition model (16 frames) with `requires_grad` as its fine-tuning script sets it."""
    model = load_official(repo).compo_bidir_vit_base_patch16_224(all_frames=16, drop_path_rate=drop_path_rate)
    for name, param in model.named_parameters():
        param.requires_grad = any(key in name for key in TRAINABLE)
    return model
