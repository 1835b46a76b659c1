"""Pretrained weights: expert checkpoints in every common format, official CAST checkpoints, our format.

Everything that reads or writes weights lives here, above `models/` (which never imports it): a model
is built from its config, then loaded with `load_experts(model, ...)`, or rebuilt whole with
`from_pretrained(dir)`.
"""

from .experts import experts_config, from_experts, paired_config, read_expert
from .formats import EXPERT_FORMATS, detect_format
from .io import WeightsError, read_state_dict, read_torchscript
from .loading import (
    LoadReport,
    from_pretrained,
    load_expert,
    load_experts,
    load_official_cast,
    push_to_hub,
    save_pretrained,
)

__all__ = ["EXPERT_FORMATS", "LoadReport", "WeightsError", "detect_format", "experts_config", "from_experts",
           "from_pretrained", "load_expert", "load_experts", "load_official_cast", "paired_config", "push_to_hub",
           "read_expert", "read_state_dict", "read_torchscript", "save_pretrained"]
