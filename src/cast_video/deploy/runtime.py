"""Running exported models: ONNX in onnxruntime, pt2 as a loaded ExportedProgram, both as modules
that return {head: logits}, like CAST, so `Predictor` and the benchmark take them as they take a CAST.

`torch.export.load` unpickles parts of an archive when the archive asks for it (pickled weights,
custom objects, sample inputs that fail the safe loader, the pre-2.7 layout). Nothing a user passes
may run code, so `load_pt2` first reads the archive itself and refuses any archive that would take
one of those paths; what is left is JSON, raw tensor bytes and a `weights_only` sample-input file.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from .contract import CONTRACT_KEY, Contract

EXPORTED_SUFFIXES = (".onnx", ".pt2")

# Every entry torch.export.save writes for a plain model; anything else (AOTInductor code, custom or
# opaque objects, legacy pickled weights) is refused.
_PT2_ENTRY = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                        r"|models/model\.json|data/weights/(model_weights_config\.json|weight_\d+)"
                        r"|data/constants/(model_constants_config\.json|tensor_\d+)"
                        r"|data/sample_inputs/model\.pt|extra/[\w.-]+)")
_PT2_CONFIGS = ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")


class OnnxModel(nn.Module):
    """An ONNX file in an onnxruntime CPU session; outputs by name, as torch tensors."""

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.path = str(path)
        try:
            self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for every bad file
            raise WeightsError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0]})") from err
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def contract(self) -> Contract:
        meta = self.session.get_modelmeta().custom_metadata_map
        if CONTRACT_KEY not in meta:
            raise WeightsError(f"{self.path}: no {CONTRACT_KEY} metadata (not written by cast-video export)")
        return Contract.from_json(meta[CONTRACT_KEY], self.path)

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(None, {self.input_name: video.detach().float().cpu().contiguous().numpy()})
        return {name: torch.from_numpy(out) for name, out in zip(self.output_names, outputs, strict=True)}


def _check_pt2_archive(path: Path) -> None:
    """Refuse a .pt2 archive that `torch.export.load` would unpickle anything from."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise WeightsError(f"{path}: not a pt2 archive ({err})") from err
    with archive:
        names = archive.namelist()
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1 or any("/" not in n for n in names):
            raise WeightsError(f"{path}: not a torch.export.save archive (one top folder expected)")
        root = roots.pop() + "/"
        odd = [n for n in names if not _PT2_ENTRY.fullmatch(n.removeprefix(root))]
        if odd:
            raise WeightsError(f"{path}: refusing archive entry {odd[0]} (only plain exported programs load)")
        for config in _PT2_CONFIGS:
            if root + config not in names:
                raise WeightsError(f"{path}: the archive lacks {config}")
            entries = json.loads(archive.read(root + config))["config"]
            pickled = [k for k, v in entries.items() if v.get("use_pickle")]
            if pickled:
                raise WeightsError(f"{path}: {config}: {pickled[0]} is pickled; refusing to unpickle it")
        sample = root + "data/sample_inputs/model.pt"
        if sample in names:
            try:
                torch.load(io.BytesIO(archive.read(sample)), weights_only=True)
            except Exception as err:  # the unpickler's errors have many types
                raise WeightsError(f"{path}: {sample} is not plain tensors; refusing to unpickle it") from err


class Pt2Model(nn.Module):
    """A pt2 archive written by `cast-video export --format pt2`, checked, then loaded."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        _check_pt2_archive(self.path)
        extra = {CONTRACT_KEY + ".json": ""}
        try:
            program = torch.export.load(str(self.path), extra_files=extra)
        except Exception as err:  # a checked archive that still does not deserialize (another torch, say)
            raise WeightsError(f"{path}: torch.export.load failed ({str(err).splitlines()[0]})") from err
        if not extra[CONTRACT_KEY + ".json"]:
            raise WeightsError(f"{self.path}: no extra/{CONTRACT_KEY}.json (not written by cast-video export)")
        self._contract = Contract.from_json(extra[CONTRACT_KEY + ".json"], str(self.path))
        self.program = program.module()

    def contract(self) -> Contract:
        return self._contract

    def train(self, mode: bool = True) -> Pt2Model:
        """An exported program has no train mode (it refuses `.eval()`): it is always the eval graph."""
        return self

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self._contract.heads, self.program(video), strict=True))


def load_exported(path: str | Path) -> tuple[nn.Module, Contract]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    model = OnnxModel(path) if path.suffix == ".onnx" else Pt2Model(path)
    return model, model.contract()


def load_model(source: str | Path) -> tuple[nn.Module, Contract]:
    """A model directory (save_pretrained / train), a hub id, or an exported .onnx / .pt2 file."""
    if Path(source).suffix in EXPORTED_SUFFIXES:
        return load_exported(source)
    from ..weights import from_pretrained

    model = from_pretrained(source)
    return model, Contract.of_model(model)
