"""Pretrained weights: expert checkpoints in every common format, official CAST checkpoints, our format."""

from .formats import EXPERT_FORMATS, detect_format
from .io import WeightsError, read_state_dict, read_torchscript
from .loading import (
    LoadReport,
    from_pretrained,
    load_expert,
    load_experts,
    load_official_cast,
    save_pretrained,
)

__all__ = ["EXPERT_FORMATS", "LoadReport", "WeightsError", "detect_format", "from_pretrained", "load_expert",
           "load_experts", "load_official_cast", "read_state_dict", "read_torchscript", "save_pretrained"]
