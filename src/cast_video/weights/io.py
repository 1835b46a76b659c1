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
import pickletools
import re
import warnings
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

_ALLOWED_GLOBALS = {"argparse.Namespace"}  # a bag of values, see the module docstring
_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")
_TRUST_HINT = "; if you trust the file, pass trusted=True (--trusted on the command line)"
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
            except Exception as err:  # nothing ran: the unpickler admits no callable but tensor rebuilding
                raise WeightsError(f"{path}: cannot read the TorchScript archive's weights: {_reason(err)}") from err
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


def _pickle_globals(file) -> list[str]:
    """The classes and functions a plain pickle names, read from its opcodes without unpickling it.

    A legacy (non-zip) `torch.save` file is four pickles in a row (magic number, protocol, system
    info, the object), so up to four are read; the raw tensor bytes after them end the scan.
    """
    strings, names = [], []
    for _ in range(4):
        try:
            for op, arg, _ in pickletools.genops(file):
                if isinstance(arg, str) and "UNICODE" in op.name:
                    strings.append(arg)
                elif op.name in ("GLOBAL", "INST"):
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
        except Exception:  # not (or no longer) a pickle
            break
    return names


def unsafe_globals(path: Path) -> list[str]:
    """What a pickle names beyond tensors and plain containers, without running it; [] if it cannot tell."""
    try:
        if zipfile.is_zipfile(path):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        else:
            with open(path, "rb") as f:
                found = [g for g in _pickle_globals(f) if not g.startswith(("torch.", "collections.OrderedDict"))]
    except Exception:  # not a pickle at all: the caller's error says why it cannot be read
        return []
    return [g for g in dict.fromkeys(found) if g not in _ALLOWED_GLOBALS]


def _reason(err: Exception) -> str:
    """The line of an error that says what is wrong (torch's weights-only errors wrap it in advice)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    return f"{type(err).__name__}: {(useful or lines or [''])[0][:200]}"


def refusal(path: Path, err: Exception, hint: str) -> str:
    """A one-line message for a pickle that `torch.load(weights_only=True)` refused."""
    unsafe = unsafe_globals(path)
    if unsafe:
        return (f"{path}: refused: the file's pickle refers to {', '.join(unsafe[:4])}, which could run code "
                f"(torch.load with weights_only=True loads tensors and plain containers only){hint}")
    return f"{path}: not a checkpoint that can be read safely with weights_only=True ({_reason(err)})"


def load_pickle_safely(path: Path, hint: str = _TRUST_HINT):
    """`torch.load(weights_only=True)`: tensors, plain containers and `argparse.Namespace`, nothing else.

    Memory-mapped when the file is a zip (every file written by torch >= 1.6). A refusal is a
    one-line `WeightsError` naming the file and what the pickle asked for, then `hint`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols on stderr; the refusal says enough
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as err:
            raise WeightsError(refusal(path, err, hint)) from err


def _load_pickle(path: Path, trusted: bool):
    if not trusted:
        return load_pickle_safely(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=zipfile.is_zipfile(path))
    except Exception as err:
        raise WeightsError(f"{path}: cannot be read: {_reason(err)}") from err


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file (which holds tensors only, so it cannot run code), or a one-line error naming it."""
    try:
        return load_file(str(path))
    except Exception as err:  # SafetensorError, or an OSError on an unreadable file
        raise WeightsError(f"{path}: not a readable safetensors file ({_reason(err)})") from err


def _read_directory(path: Path, trusted: bool) -> dict[str, torch.Tensor]:
    for name in _DIRECTORY_FILES:
        file = path / name
        if not file.exists():
            continue
        if not name.endswith(".index.json"):
            return read_file(file, trusted)
        shards = sorted(set(read_json(file, "weight_map")["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(read_file(path / shard, trusted))
        return state
    raise WeightsError(f"{path}: a directory without any of {', '.join(_DIRECTORY_FILES)}")


def read_file(path: Path, trusted: bool = False) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if is_torchscript(path):
        if trusted:  # the TorchScript runtime itself, as OpenAI's clip.load does
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        return read_torchscript(path)
    return unwrap(_load_pickle(path, trusted), str(path))


def read_json(path: Path, *required: str) -> dict:
    """A JSON object with the `required` keys, or a one-line error naming the file and the key."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: not a readable JSON file ({_reason(err)})") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    missing = [key for key in required if key not in data]
    if missing:
        raise WeightsError(f"{path}: no {missing[0]!r} key")
    return data


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
