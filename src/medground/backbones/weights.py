"""Reading weights without trusting them: safetensors and PyTorch files read into memory of their own, pickled code
refused in medground's words, keys, shapes, dtypes and values checked against the network, and networks built only
after their size is known. Every family reads its weights through here; each failure names the file and key."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from medground.errors import ModelLoadError, WeightsNotFoundError


def read_json_object(path: Path) -> dict[str, Any]:
    """A model's JSON file (``model.json``, a component's ``config.json``), checked to be an object."""
    from medground.text_input import read_json_object as read_object

    return read_object(path, "model description", ModelLoadError)


def inside(root: Path, relative: Any, where: str) -> Path:
    """``root / relative``, refusing absolute paths and paths that climb out of ``root``."""
    if not isinstance(relative, str) or not relative:
        raise ModelLoadError(f"{where}: expected a relative path inside {root}, got {relative!r}")
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise ModelLoadError(f"{where}: path {relative!r} leaves the model directory {root}")
    return candidate


def sha256_of(path: Path) -> str:
    """Streamed in 1 MiB chunks, so hashing a multi-GB weight file never holds it in memory."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} to record its SHA-256: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def check_finite(named: dict[str, torch.Tensor] | nn.Module, where: str) -> None:
    """NaN or infinite weights make blank or shifted maps without any error downstream: refuse them here."""
    items = named.state_dict().items() if isinstance(named, nn.Module) else named.items()
    for key, tensor in items:
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise ModelLoadError(f"{where}: weight {key!r} holds NaN or infinite values")


def _all_finite(tensor: torch.Tensor) -> bool:
    """Minimum and maximum are NaN where any value is, and infinite where any value is: one pass, no mask (six
    times faster than ``isfinite(...).all()`` on CPU). 8-bit float formats have no kernel: widened first."""
    if tensor.numel() == 0:
        return True
    if tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        tensor = tensor.to(torch.float32)
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each read straight into its own memory: one copy of the weights, none of
    it backed by the file (a mapped file that is later rewritten in place would change or crash a loaded model)."""
    header = _safetensors_header(path)
    state = {}
    try:
        with path.open("rb") as handle:
            for key, (dtype, shape, start, end) in header.items():
                state[key] = _read_tensor(handle, dtype, shape, start, end)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path} is not a readable safetensors file ({first_line(exc)}): it is truncated, "
                             "corrupt or not safetensors; download it again or provide an intact copy") from None
    return state


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                      "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_header(path: Path) -> dict[str, tuple[torch.dtype, list[int], int, int]]:
    """Key -> (dtype, shape, byte offset, end) of each tensor, without reading any tensor. The safetensors library
    checks the header first (JSON, offsets that cover the data exactly, shapes that fit them)."""
    if not path.is_file():
        raise WeightsNotFoundError(f"weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt"):
            pass
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            entries = json.loads(handle.read(length))
    except (SafetensorError, OSError, ValueError, RuntimeError, struct.error) as exc:
        raise ModelLoadError(f"{path} is not a readable safetensors file ({first_line(exc)}): it is truncated, "
                             "corrupt or not safetensors; download it again or provide an intact copy") from None
    entries.pop("__metadata__", None)
    header = {}
    for key, entry in entries.items():
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ModelLoadError(f"{path}: weight {key!r} has dtype {entry['dtype']}, which medground does not read; "
                                 f"provide one of {sorted(_SAFETENSORS_DTYPES)}")
        start, end = entry["data_offsets"]
        header[key] = (dtype, entry["shape"], 8 + length + start, 8 + length + end)
    return header


def _read_tensor(handle: Any, dtype: torch.dtype, shape: list[int], start: int, end: int) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=dtype)
    target = tensor.reshape(-1).view(torch.uint8).numpy()
    handle.seek(start)
    if handle.readinto(target) != end - start:
        raise ValueError(f"the file ends inside a tensor (bytes {start}..{end})")
    return tensor


def read_torch_state(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A plain ``.pt``/``.bin`` state dict (name -> tensor), read with ``weights_only``: a pickle that would import
    code or build other objects is refused, never run. ``mmap`` maps a zip-format file instead of reading it (for a
    look at names and dtypes; a loaded model should not be backed by a file that may change)."""
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:  # weights_only refused a global: torch's advice is to turn the check off
        raise ModelLoadError(pickled_objects_message(path, exc)) from None
    except Exception as exc:  # torch raises several kinds (RuntimeError, KeyError, EOFError...) for damaged files
        raise ModelLoadError(f"cannot read {path} as a PyTorch state dict ({first_line(exc)}): it is truncated, "
                             "corrupt or not written by torch.save; provide an intact copy, ideally as "
                             "safetensors") from None
    _check_flat_state(state, path)
    return state


def pickled_objects_message(path: Path | str, exc: BaseException) -> str:
    """Why ``weights_only`` refused a pickle, in medground's words (torch's own message suggests turning the check
    off): objects or code it would have to build, or bytes that are no pickle at all."""
    text = str(exc)
    if "Unsupported operand" in text:  # not a pickle stream: damaged, or not a checkpoint
        return (f"cannot read {path} as a PyTorch state dict (it is not a pickle that torch.save wrote): it is "
                "truncated, corrupt or another kind of file; provide an intact copy, ideally as safetensors")
    found = re.search(r"GLOBAL ([\w.]+)", text)
    named = f" (it would import {found.group(1)})" if found else ""
    return (f"{path} holds pickled code or objects{named}, not only tensors: medground will not unpickle it. "
            "Provide these weights as safetensors (convert them only where you trust the file's origin).")


def first_line(exc: BaseException) -> str:
    """The first line of a library's error, without any advice to load with ``weights_only=False``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "weights_only" not in line]
    text = lines[0] if lines else ""
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _check_flat_state(state: Any, path: Path) -> None:
    """A state dict maps parameter names to tensors; anything else would fail deep inside ``load_state_dict``."""
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            hint = " (a training checkpoint? save its 'state_dict' entry alone)" if "state_dict" in state else ""
            raise ModelLoadError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a flat "
                                 f"state dict (name -> tensor){hint}")


def load_state_strict(network: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Every parameter filled, no key left over, shapes equal, floating values for floating parameters, values
    finite. A network built on the meta device takes the tensors themselves (no second copy of the weights in
    memory); tensors of another floating dtype are then converted in ``state``, in place, one at a time."""
    targets = network.state_dict(keep_vars=True)
    _check_weight_dtypes(targets, state, where, type(network).__name__)
    check_finite(state, where)
    assign = any(parameter.is_meta for parameter in network.parameters())
    if assign:
        for key, target in targets.items():
            if key in state and state[key].dtype != target.dtype:
                state[key] = state[key].to(target.dtype)
    try:
        result = network.load_state_dict(state, strict=False, assign=assign)
    except RuntimeError as exc:  # shape mismatches
        raise ModelLoadError(f"{where} does not fit {type(network).__name__}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(
            f"{where} does not match {type(network).__name__}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:3]})")


MAX_PARAMETERS = 4_000_000_000
"""16 GB of fp32 weights: above every latent diffusion model medground knows (SDXL's UNet has 2.6 billion)."""


def check_size(network: nn.Module, where: str) -> nn.Module:
    """``network``, refused when its parameter count is over ``MAX_PARAMETERS``: a description with absurd widths
    would otherwise ask for terabytes."""
    count = sum(parameter.numel() for parameter in network.parameters())
    if count > MAX_PARAMETERS:
        raise ModelLoadError(f"{where}: the network it describes has {count:,} parameters, over the limit of "
                             f"{MAX_PARAMETERS:,}; check its widths and channels")
    return network


def build_sized(build: Callable[[], nn.Module], where: str) -> nn.Module:
    """``build()``, after a first build on the meta device (which allocates nothing) passed ``check_size``."""
    with torch.device("meta"):
        check_size(build(), where)
    return build()


def _check_weight_dtypes(targets: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str,
                        network: str) -> None:
    """Integer (e.g. int8-quantized), boolean or complex values cast silently into floating parameters and give
    flat, meaningless maps: refuse them, naming the key and dtype."""
    for key, target in targets.items():
        value = state.get(key)
        if value is not None and target.is_floating_point() and not value.is_floating_point():
            raise ModelLoadError(_not_floating(where, key, value.dtype, network))


def _not_floating(where: str, key: str, dtype: torch.dtype, network: str) -> str:
    return (f"{where}: weight {key!r} is {str(dtype).removeprefix('torch.')}, but {network} needs floating-point "
            "values there (quantized or integer checkpoints are not supported); provide the float16/bfloat16/float32 "
            "weights")


def build_network(cls: type[nn.Module], args: Any, where: str) -> nn.Module:
    """Instantiate an allow-listed class; arguments that do not fit it are a ModelLoadError naming them."""
    if not isinstance(args, dict):
        raise ModelLoadError(f"{where}: 'args' must be an object, got {args!r}")
    try:
        return build_sized(lambda: cls(**args), where)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, ZeroDivisionError) as exc:
        raise ModelLoadError(f"{where}: {cls.__name__}({args}) cannot be built: {type(exc).__name__}: {exc}") from exc


_TEXT_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")
"""The weight files transformers looks for, in its order of preference."""


def text_checkpoint_dtypes(folder: Path) -> tuple[dict[str, torch.dtype], str] | None:
    """Key -> dtype of the weights transformers will read from ``folder``, read first with medground's own readers:
    a damaged file or a pickle holding code is refused in medground's words, and transformers, which casts integer
    weights into float parameters silently, cannot hide their dtype. No tensor is read (a safetensors header, or a
    mapped zip)."""
    for name in _TEXT_WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return _file_dtypes(path), str(path)
        dtypes: dict[str, torch.dtype] = {}
        for shard in shard_names(folder, name):
            dtypes.update(_file_dtypes(folder / shard))
        return dtypes, str(path)
    return None


def _file_dtypes(path: Path) -> dict[str, torch.dtype]:
    if path.suffix == ".safetensors":
        return {key: entry[0] for key, entry in _safetensors_header(path).items()}
    return {key: value.dtype for key, value in read_torch_state(path, mmap=True).items()}


def check_text_dtypes(model: nn.Module, dtypes: dict[str, torch.dtype], origin: str) -> None:
    """Non-floating checkpoint tensors that fill floating parameters (a checkpoint may prefix the model's names,
    as BERT's ``bert.`` does) are refused, naming the file, key and dtype."""
    names = [name for name, parameter in model.named_parameters() if parameter.is_floating_point()]
    for key, dtype in dtypes.items():
        if not dtype.is_floating_point and any(key == name or key.endswith(f".{name}") for name in names):
            raise ModelLoadError(_not_floating(origin, key, dtype, type(model).__name__))


def shard_names(folder: Path, index_name: str) -> list[str]:
    """The shard files a sharded checkpoint's index (``*.index.json``) names, each checked to lie in ``folder``."""
    index = folder / index_name
    shards = read_json_object(index).get("weight_map")
    if not isinstance(shards, dict) or not all(isinstance(shard, str) for shard in shards.values()):
        raise ModelLoadError(f"{index}: 'weight_map' must map weight names to shard file names")
    for shard in shards.values():
        inside(folder, shard, str(index))  # no shard outside the component folder
    return sorted(set(shards.values()))
