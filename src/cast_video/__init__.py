"""cast-video: CAST (Cross-Attention in Space and Time, NeurIPS 2023) in plain PyTorch 2.

`cast_video.models` holds the modules and their configs; `cast_video.weights` loads and saves them.
The common calls are re-exported here: `CAST.from_preset(...)`, `load_experts(model, spatial=...,
temporal=...)`, `save_pretrained(model, dir)`, `from_pretrained(dir)`, `load_official_cast(file)`,
`from_experts(spatial=DIR_OR_HUB_ID, temporal=DIR_OR_HUB_ID, heads={"action": 400})`.
"""

from .models import CAST, CASTConfig, ExpertConfig, HeadConfig
from .weights import from_experts, from_pretrained, load_experts, load_official_cast, push_to_hub, save_pretrained

__version__ = "0.1.0"
__all__ = ["CAST", "CASTConfig", "ExpertConfig", "HeadConfig", "__version__", "from_experts", "from_pretrained",
           "load_experts", "load_official_cast", "push_to_hub", "save_pretrained"]
