"""cast-video: CAST (Cross-Attention in Space and Time, NeurIPS 2023) in plain PyTorch 2."""

from .models import CAST, CASTConfig, ExpertConfig, HeadConfig
from .weights import load_official_cast

__version__ = "0.1.0"
__all__ = ["CAST", "CASTConfig", "ExpertConfig", "HeadConfig", "__version__", "load_official_cast"]
