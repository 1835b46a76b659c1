"""CAST and its parts: the experts, B-CAST, presets and ablations."""

from .cast import CAST, CASTBlock, CASTConfig, HeadConfig
from .experts import ExpertConfig, ViTExpert
from .presets import ABLATIONS, PRESETS, preset_config

__all__ = ["ABLATIONS", "CAST", "CASTBlock", "CASTConfig", "ExpertConfig", "HeadConfig", "PRESETS",
           "ViTExpert", "preset_config"]
