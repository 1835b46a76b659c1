"""The preprocessing contract: what an exported model needs besides its graph to be used correctly.

An ONNX or pt2 file holds the network only. Decoding, frame sampling, resizing, normalisation and the
class names live outside it, so they travel with it: in the ONNX metadata (`cast_video.contract`), in
the pt2 archive (`extra/contract.json`) and in a JSON file beside either. `Predictor` reads the same
contract for a PyTorch model (`Contract.of_model`), so every runtime shares one preprocessing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..errors import WeightsError
from ..normalization import PIXEL_STATS

CONTRACT_KEY = "cast_video.contract"  # ONNX metadata key and pt2 extra file stem
INPUT_NAME = "video"
LAYOUT = "(B, 3, T, H, W) float32 RGB, x = (pixel / 255 - mean) / std; T = num_frames, H = W = img_size"


@dataclass
class Contract:
    num_frames: int  # 2T frames per clip: fixed, the position embeddings are sized for it
    img_size: int  # H = W: fixed for the same reason
    input_norm: str  # the name of the pixel statistics below ("imagenet" or "clip")
    mean: list[float]
    std: list[float]
    heads: dict[str, int]  # head name -> classes, in the order of the outputs
    class_names: dict[str, list[str]] = field(default_factory=dict)
    input_name: str = INPUT_NAME
    layout: str = LAYOUT
    export: dict = field(default_factory=dict)  # how the file was made: format, opset, exporter, torch version
    format: str = "cast-video-contract/1"

    @classmethod
    def of_model(cls, model, class_names: dict[str, list[str]] | None = None) -> Contract:
        cfg = model.config
        mean, std = PIXEL_STATS[cfg.input_norm]
        return cls(cfg.num_frames, cfg.img_size, cfg.input_norm, list(mean), list(std),
                   {h.name: h.num_classes for h in cfg.heads},
                   dict(class_names or {h.name: list(h.labels) for h in cfg.heads if h.labels}))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> Contract:
        """Parse and check a contract; `where` names its file in the one-line error."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise WeightsError(f"{where}: the preprocessing contract is not JSON ({err})") from err
        if not isinstance(raw, dict) or raw.get("format") != cls.format:
            raise WeightsError(f"{where}: not a cast-video preprocessing contract (format {cls.format!r})")
        missing = [k for k in ("num_frames", "img_size", "input_norm", "mean", "std", "heads") if k not in raw]
        if missing:
            raise WeightsError(f"{where}: the preprocessing contract lacks {', '.join(missing)}")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise WeightsError(f"{where}: unknown keys in the preprocessing contract: {', '.join(unknown)}")
        contract = cls(**raw)
        if not contract.heads or len(contract.mean) != 3 or len(contract.std) != 3:
            raise WeightsError(f"{where}: the preprocessing contract needs heads and 3 mean and 3 std values")
        return contract
