"""Pretrained weights: expert checkpoints in every common format, official CAST checkpoints, our format."""

from .formats import EXPERT_FORMATS, detect_format
from .loading import (
    LoadReport,
    WeightsError,
    from_pretrained,
    load_expert,
    load_experts,
    load_official_cast,
    read_state_dict,
    save_pretrained,
)

__all__ = ["EXPERT_FORMATS", "LoadReport", "WeightsError", "detect_format", "from_pretrained", "load_expert",
           "load_experts", "load_official_cast", "read_state_dict", "save_pretrained"]
