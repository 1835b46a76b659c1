"""Reading a flat state dict from whatever a user has: a file, a transformers-style directory, a hub id.

Nothing here runs code from a checkpoint. Pickles go through `torch.load(weights_only=True)`, which
allows tensors and plain containers only (plus `argparse.Namespace`, a bag of values that the VideoMAE
and CAST training scripts pickle next to their weights). TorchScript archives (OpenAI's CLIP files)
are not loaded as programs: `read_torchscript` unpickles their `data.pkl` with an allow-list that
admits tensors and turns every scripted module into an inert attribute holder, so the archive's code
is never compiled or run. Files are memory-mapped where the format allows (safetensors, zip pickles),
so a loaded checkpoint costs page cache, not a second copy of the weights in process memory.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import WeightsError  # noqa: F401  (re-exported)

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
CONTAINER_KEYS = ("model", "module", "state_dict", "model_state")
# transformers' file names, single-file first; an index names the shards of a large checkpoint.
_DIRECTORY_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")
_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}

_JIT_CONTAINERS = {"build_intlist": list, "build_doublelist": list, "build_boollist": list, "build_tensorlist": list,
                   "restore_type_tag": lambda value, _type: value}


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a `code/` folder and `constants.pkl`; `torch.save` zips are not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


class _ScriptObject:
    """Stands for a scripted module or class in a TorchScript pickle: it only keeps its attributes."""

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl` admitting tensors, storages and plain containers only."""

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch.jit._pickle" and name in _JIT_CONTAINERS:  # typed lists of script attributes
            return _JIT_CONTAINERS[name]
        raise pickle.UnpicklingError(f"TorchScript archive refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid):
        kind, dtype, key, _location, _numel = pid  # ('storage', dtype, key, device, numel)
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unknown persistent object {pid!r}")
        data = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        return torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _collect_tensors(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    for name, value in obj.state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect_tensors(value, f"{prefix}{name}.", out)


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive by attribute path: its state dict, without loading its code."""
    with zipfile.ZipFile(path) as zf:
        roots = [n[: -len("/data.pkl")] for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(roots) != 1:
            raise WeightsError(f"{path}: a TorchScript archive without a single data.pkl")
        byteorder = f"{roots[0]}/byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise WeightsError(f"{path}: big-endian TorchScript archives are not supported")
        with zf.open(f"{roots[0]}/data.pkl") as f:
            try:
                root = _TorchScriptUnpickler(f, zf, roots[0]).load()
            except (pickle.UnpicklingError, ValueError, KeyError) as err:
                raise WeightsError(f"{path}: cannot read the TorchScript archive's weights: {err}") from err
    if not isinstance(root, _ScriptObject):
        raise WeightsError(f"{path}: the TorchScript archive does not hold a module")
    out: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", out)
    return out


def unwrap(obj, where: str) -> dict[str, torch.Tensor]:
    """Checkpoints nest the weights under 'model', 'module' (DeepSpeed) or 'state_dict'."""
    for key in CONTAINER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return unwrap(obj[key], where)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{where}: no state dict found (looked under {', '.join(CONTAINER_KEYS)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_pickle(path: Path, trusted: bool):
    """`torch.load`, memory-mapped when the file is a zip (every file written by torch >= 1.6)."""
    mmap = zipfile.is_zipfile(path)
    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        if trusted:
            raise WeightsError(f"{path}: cannot be read: {err}") from err
        raise WeightsError(f"{path}: cannot be read with weights_only=True ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200]}); if you trust the file, pass trusted=True "
                           "(--trusted on the command line)") from err


def _read_directory(path: Path, trusted: bool) -> dict[str, torch.Tensor]:
    for name in _DIRECTORY_FILES:
        file = path / name
        if not file.exists():
            continue
        if not name.endswith(".index.json"):
            return read_file(file, trusted)
        shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_file(path / shard, trusted))
        return state
    raise WeightsError(f"{path}: a directory without any of {', '.join(_DIRECTORY_FILES)}")


def read_file(path: Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if is_torchscript(path):
        if trusted:  # the TorchScript runtime itself, as OpenAI's clip.load does
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return read_torchscript(path)
    return unwrap(_load_pickle(path, trusted), str(path))


def hub_snapshot(repo_id: str, patterns: list[str]) -> Path:
    """A local snapshot of a hub repository (downloaded once, then cached by huggingface_hub)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # offline, unknown repository, gated, ...
        raise WeightsError(f"{repo_id}: not a local path, and the hub could not provide it: {err}") from err


def resolve(source: str | os.PathLike) -> Path:
    """A local path for a path or a hub id; safetensors are fetched from the hub, pickles only if there are none."""
    path = Path(source)
    if path.exists():
        return path
    if isinstance(source, str) and HUB_ID.fullmatch(source):
        path = hub_snapshot(source, ["*.json", "*.safetensors"])
        if not any(path.glob("*.safetensors")):
            path = hub_snapshot(source, ["*.json", "*.bin"])
        return path
    raise FileNotFoundError(f"{source}: no such file or directory")


def read_state_dict(source: str | os.PathLike, trusted: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """A flat state dict from a file, a transformers-style directory, or a hub id (where a network is).

    `trusted=True` allows pickles holding arbitrary objects and loads TorchScript with `torch.jit.load`:
    use it only for files from a source you trust.
    """
    path = resolve(source)
    state = _read_directory(path, trusted) if path.is_dir() else read_file(path, trusted)
    return state, str(path)
