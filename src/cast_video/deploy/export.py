"""`cast-video export`: a CAST as an ONNX file (onnxruntime and every other ONNX runtime) or a pt2
archive (torch.export), with the preprocessing contract inside it and in a JSON file beside it.

Only the batch dimension is dynamic. Frames and image size are fixed: the position embeddings of both
experts (and B-CAST's time positions) are sized for them at build time.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import CastVideoError
from ..files import atomic_write_text
from .contract import CONTRACT_KEY, Contract
from .runtime import load_exported

log = logging.getLogger(__name__)

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4  # largest |exported - eager fp32| logit `--check` accepts
EXTERNAL_DATA_BYTES = 100 * 2**20  # weights above this go to FILE.data beside the ONNX file


class ExportMismatch(CastVideoError):
    """The exported model does not compute what the PyTorch model computes."""


class HeadOutputs(nn.Module):
    """The model with its {head: logits} output as a tuple in head order, so the exported graph's
    outputs can be named after the heads."""

    def __init__(self, model: nn.Module, heads: list[str]):
        super().__init__()
        self.model, self.heads = model, heads

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(video)  # {head: logits}, single-head models too
        return tuple(out[h] for h in self.heads)


def _example(contract: Contract, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, contract.num_frames, contract.img_size, contract.img_size)


def _batch_dim() -> dict:
    return {"video": {0: torch.export.Dim("batch", min=1)}}


def export_onnx(model: nn.Module, contract: Contract, out: Path, external_data: bool | None = None) -> Contract:
    """Through the dynamo exporter; the legacy TorchScript exporter only if that fails."""
    wrapper = HeadOutputs(model.eval(), list(contract.heads)).eval()
    heads = list(contract.heads)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if external_data is None:
        external_data = weight_bytes > EXTERNAL_DATA_BYTES
    try:
        program = torch.onnx.export(wrapper, (_example(contract),), dynamo=True, input_names=["video"],
                                    output_names=heads, dynamic_shapes=_batch_dim(), verbose=False)
    except Exception as err:  # the dynamo exporter fails in many ways; the legacy one is the documented fallback
        log.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter", err)
        return _export_onnx_legacy(wrapper, contract, out)
    opset = program.model.opset_imports.get("", None)
    contract = dataclasses.replace(contract, export={"format": "onnx", "exporter": "torch.onnx dynamo",
                                                     "opset": opset, "torch": torch.__version__,
                                                     "external_data": bool(external_data)})
    program.model.metadata_props[CONTRACT_KEY] = contract.to_json()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        program.save(str(Path(tmp) / out.name), external_data=external_data)  # + out.name.data if external
        for part in sorted(Path(tmp).iterdir(), key=lambda f: f.suffix == ".onnx"):  # the data first, the graph last
            part.replace(out.parent / part.name)
    return contract


def _export_onnx_legacy(wrapper: nn.Module, contract: Contract, out: Path) -> Contract:
    import onnx

    heads = list(contract.heads)
    opset = 17
    tmp = out.with_name(out.name + ".tmp.onnx")
    torch.onnx.export(wrapper, (_example(contract),), str(tmp), dynamo=False, input_names=["video"],
                      output_names=heads, dynamic_axes={"video": {0: "batch"}}, opset_version=opset)
    contract = dataclasses.replace(contract, export={"format": "onnx", "exporter": "torch.onnx legacy",
                                                     "opset": opset, "torch": torch.__version__,
                                                     "external_data": False})
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, {CONTRACT_KEY: contract.to_json()})
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    return contract


def export_pt2(model: nn.Module, contract: Contract, out: Path) -> Contract:
    wrapper = HeadOutputs(model.eval(), list(contract.heads)).eval()
    program = torch.export.export(wrapper, (_example(contract),), dynamic_shapes=_batch_dim())
    contract = dataclasses.replace(contract, export={"format": "pt2", "exporter": "torch.export",
                                                     "torch": torch.__version__})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.pt2")
    torch.export.save(program, str(tmp), extra_files={CONTRACT_KEY + ".json": contract.to_json()})
    tmp.replace(out)
    return contract


def check_export(model: nn.Module, path: Path, video: str | Path) -> dict[str, float]:
    """Decode `video`, preprocess it as `predict` does (clips x crops views), and compare the exported
    model's logits with eager fp32 at batch 1 and at the full view batch: {head: max |difference|}."""
    from ..engine.predict import Predictor

    exported, contract = load_exported(path)
    inputs = Predictor(model, precision="fp32", contract=contract).inputs(video)  # (V, 3, 2T, S, S)
    diffs = {h: 0.0 for h in contract.heads}
    with torch.no_grad():
        for x in (inputs[:1], inputs):
            ref, got = HeadOutputs(model.eval(), list(contract.heads))(x), exported(x)
            for head, r in zip(contract.heads, ref, strict=True):
                diffs[head] = max(diffs[head], float((got[head] - r.float()).abs().max()))
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > TOLERANCE:
        raise ExportMismatch(f"{path}: head {worst}: exported logits differ from eager fp32 by {diffs[worst]:.3g} "
                             f"(> {TOLERANCE:g}) on {video}")
    return diffs


def export_model(model: nn.Module, contract: Contract, fmt: str, out: str | Path, check_video=None,
                 external_data: bool | None = None) -> dict:
    """Export, write the contract beside the file (FILE.json), and check when `check_video` is given."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out = Path(out)
    start = time.perf_counter()
    contract = export_onnx(model, contract, out, external_data) if fmt == "onnx" else export_pt2(model, contract, out)
    seconds = time.perf_counter() - start
    sidecar = out.with_suffix(".json")
    atomic_write_text(sidecar, contract.to_json() + "\n")
    result = {"file": str(out), "contract": str(sidecar), "seconds": round(seconds, 1), **contract.export}
    if check_video is not None:
        try:
            result["check"] = {"video": str(check_video), "max_abs_diff": check_export(model, out, check_video)}
        except ExportMismatch:
            for written in (out, Path(str(out) + ".data"), sidecar):  # a file that failed its check is no export
                written.unlink(missing_ok=True)
            raise
    return result
