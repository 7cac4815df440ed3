"""The medground model directory and the one loader every family goes through.

A model directory holds ``model.json`` (family, each component's class and arguments or sub-folder, the noise
schedule, latent scale, image size, grounding defaults, provenance), the networks' weights, and the text
encoder and tokenizer in the transformers layout (or hub ids with a pinned revision). ``load_model`` also takes a
known name (``toy``, ``toy-sd``), a diffusers pipeline folder (``model_index.json``) and ``hub-id@revision``.

Everything read from disk is checked before it is trusted: JSON types, paths that stay inside the directory,
strict weight keys, finite weights, a usable noise schedule and latent scale. Each failure names the file and key.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from medground.backbones.base import Backbone, NoiseSchedule, family_class
from medground.errors import ModelLoadError, WeightsNotFoundError

MODEL_FORMAT = "medground-ldm/1"
MODEL_FILE = "model.json"
PIPELINE_FILE = "model_index.json"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
KNOWN_MODELS: dict[str, Path] = {
    "toy": PACKAGE_DIR / "toy" / "model",
    "toy-sd": PACKAGE_DIR / "toy" / "model-sd",
}
"""Names ``load_model`` resolves without a path: the trained toy models shipped inside the package."""
MAX_IMAGE_SIZE = 2048
"""Larger inputs are refused: a 4096 model input ran for over 12 minutes on a CPU before its first map."""


def load_model(path_or_name: str | Path = "toy", device: str | torch.device = "cpu",
               text_encoder: str | None = None) -> Backbone:
    """Load a model with strict checks: a known name (``toy``, ``toy-sd``), a medground model directory, a diffusers
    pipeline folder (``model_index.json``) or ``hub-id[@revision]`` of a diffusers pipeline.

    ``text_encoder`` overrides where the text encoder and tokenizer come from: a local folder (with
    ``text_encoder/`` and ``tokenizer/`` subfolders, or the files directly) or ``hub-id[@revision]``.
    """
    device = check_device(device)
    model_dir = resolve_model_source(path_or_name)
    text_source = parse_source(text_encoder) if text_encoder else None
    if (model_dir / MODEL_FILE).is_file():
        spec = read_spec(model_dir)
    else:
        from medground.backbones.diffusers import spec_from_pipeline

        spec = spec_from_pipeline(model_dir)
    backbone = family_class(spec["family"], str(model_dir / MODEL_FILE)).from_spec(model_dir, spec, text_source)
    return backbone.to(device)


def check_device(device: str | torch.device) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda or cuda:N ({exc})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but this PyTorch sees no CUDA device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices are visible")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ModelLoadError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    return parsed


def resolve_model_source(path_or_name: str | Path) -> Path:
    """A known name -> its shipped folder; an existing path -> itself; ``hub-id[@revision]`` -> the hub snapshot."""
    if not isinstance(path_or_name, (str, Path)):
        raise ModelLoadError(f"a model is a known name {sorted(KNOWN_MODELS)}, a folder or hub-id[@revision]; got "
                             f"{path_or_name!r}")
    if isinstance(path_or_name, str) and path_or_name in KNOWN_MODELS:
        return KNOWN_MODELS[path_or_name]
    path = Path(path_or_name)
    if path.exists():
        if not (path / MODEL_FILE).is_file() and not (path / PIPELINE_FILE).is_file():
            raise WeightsNotFoundError(f"no {MODEL_FILE} (medground model) or {PIPELINE_FILE} (diffusers pipeline) "
                                       f"in {path}; known model names: {sorted(KNOWN_MODELS)}")
        return path
    text = str(path_or_name)
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1 and " " not in text:
        source = parse_source(text)
        return hub_snapshot(source["hub_id"], source["revision"])
    raise WeightsNotFoundError(f"no model at {path} (not a folder, a known name {sorted(KNOWN_MODELS)} or "
                               "a hub id such as org/name@revision)")


def parse_source(source: str) -> dict[str, str]:
    """``DIR`` -> a local folder; ``hub-id[@revision]`` -> a hub reference (only when no such folder exists)."""
    if Path(source).exists():
        return {"path": str(Path(source).resolve())}
    hub_id, _, revision = source.partition("@")
    return {"hub_id": hub_id, "revision": revision or "main"}


def hub_snapshot(hub_id: str, revision: str, allow_patterns: list[str] | None = None) -> Path:
    """The local snapshot of a hub repository; offline it works from the cache, and errors name id and revision."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=allow_patterns))
    except Exception as exc:  # the hub client raises many unrelated types for "not available"
        raise WeightsNotFoundError(
            f"model not available from hub id {hub_id!r} revision {revision!r}: {type(exc).__name__}: {exc}. "
            "Download it where the hub is reachable (it is then used from the cache, also with HF_HUB_OFFLINE=1) "
            "or pass a local folder."
        ) from exc


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


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def read_spec(model_dir: Path) -> dict[str, Any]:
    """``model.json`` read and checked for the keys every family needs."""
    spec_path = model_dir / MODEL_FILE
    spec = read_json_object(spec_path)
    if spec.get("format") != MODEL_FORMAT:
        raise ModelLoadError(f"{spec_path}: format is {spec.get('format')!r}, expected {MODEL_FORMAT!r}")
    if "family" not in spec:
        raise ModelLoadError(f"{spec_path}: no 'family' key (one of the registered model families)")
    for key, kind in (("noise_schedule", dict), ("grounding_defaults", dict), ("name", str)):
        if key in spec and not isinstance(spec[key], kind):
            raise ModelLoadError(f"{spec_path}: {key!r} must be a {kind.__name__}, got {spec[key]!r}")
    check_grounding_defaults(spec.get("grounding_defaults", {}), str(spec_path))
    return spec


def check_grounding_defaults(defaults: dict[str, Any], where: str) -> None:
    """A model may default only model-specific settings, each valid as a preset's would be."""
    from medground.config import MODEL_FIELDS, GroundingConfig
    from medground.errors import ConfigError

    extra = sorted(set(defaults) - set(MODEL_FIELDS))
    if extra:
        raise ModelLoadError(f"{where}: grounding_defaults may only set {list(MODEL_FIELDS)}; found {extra}")
    try:
        GroundingConfig.from_dict(defaults, "grounding_defaults")
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None


def spec_image_size(spec: dict[str, Any], where: str, factor: int) -> int:
    """The model's square input side: a positive multiple of the autoencoder's downsampling factor."""
    size = spec.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % factor:
        raise ModelLoadError(f"{where}: image_size must be a positive multiple of the autoencoder's factor {factor}, "
                             f"got {size!r}")
    if size > MAX_IMAGE_SIZE:
        raise ModelLoadError(f"{where}: image_size {size} is over {MAX_IMAGE_SIZE}; one grounding would take hours "
                             "on a CPU and tens of GB of attention memory. Use the size the model was trained at.")
    return size


def spec_latent_scale(spec: dict[str, Any], where: str) -> float:
    scale = spec.get("latent_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ModelLoadError(f"{where}: latent_scale must be a finite number > 0, got {scale!r}")
    return float(scale)


def spec_noise_schedule(values: Any, where: str) -> NoiseSchedule:
    if not isinstance(values, dict):
        raise ModelLoadError(f"{where}: noise_schedule must be an object, got {values!r}")
    try:
        return NoiseSchedule(**values)
    except TypeError as exc:
        raise ModelLoadError(f"{where}: noise_schedule {values}: {exc}") from None
    except ModelLoadError as exc:
        raise ModelLoadError(f"{where}: noise_schedule: {exc}") from None


def inside(root: Path, relative: Any, where: str) -> Path:
    """``root / relative``, refusing absolute paths and paths that climb out of ``root``."""
    if not isinstance(relative, str) or not relative:
        raise ModelLoadError(f"{where}: expected a relative path inside {root}, got {relative!r}")
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise ModelLoadError(f"{where}: path {relative!r} leaves the model directory {root}")
    return candidate


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
        raise ModelLoadError(f"{path} is not a readable safetensors file ({_first_line(exc)}): it is truncated, "
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
        raise ModelLoadError(f"{path} is not a readable safetensors file ({_first_line(exc)}): it is truncated, "
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
        raise ModelLoadError(_pickled_objects_message(path, exc)) from None
    except Exception as exc:  # torch raises several kinds (RuntimeError, KeyError, EOFError...) for damaged files
        raise ModelLoadError(f"cannot read {path} as a PyTorch state dict ({_first_line(exc)}): it is truncated, "
                             "corrupt or not written by torch.save; provide an intact copy, ideally as "
                             "safetensors") from None
    _check_flat_state(state, path)
    return state


def _pickled_objects_message(path: Path | str, exc: BaseException) -> str:
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


def _first_line(exc: BaseException) -> str:
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


def spec_parts(model_dir: Path, spec: dict[str, Any], text_source: dict[str, str] | None,
               factor: int) -> dict[str, Any]:
    """What every family reads the same way from ``model.json``: text encoder and tokenizer, noise schedule,
    latent scale, image size, name."""
    where = str(model_dir / MODEL_FILE)
    return {"text_encoder": load_text_part(model_dir, spec, "text_encoder", text_source),
            "tokenizer": load_text_part(model_dir, spec, "tokenizer", text_source),
            "noise_schedule": spec_noise_schedule(spec.get("noise_schedule"), where),
            "latent_scale": spec_latent_scale(spec, where), "image_size": spec_image_size(spec, where, factor),
            "name": str(spec.get("name", model_dir.name)), "description": spec}


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
        return cls(**args)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, ZeroDivisionError) as exc:
        raise ModelLoadError(f"{where}: {cls.__name__}({args}) cannot be built: {type(exc).__name__}: {exc}") from exc


TEXT_ENCODER_CLASSES = {"transformers.CLIPTextModel", "transformers.BertModel"}
TOKENIZER_CLASSES = {"transformers.CLIPTokenizer", "transformers.BertTokenizer"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def text_part_folder(base: Path, part: str) -> Path:
    """``base/part`` in the diffusers layout (``text_encoder/``, ``tokenizer/``), else ``base`` itself."""
    return base / part if (base / part).is_dir() else base


def load_text_part(model_dir: Path, spec: dict[str, Any], part: str, override: dict[str, str] | None) -> Any:
    """The text encoder (frozen, checked finite) or the tokenizer named by ``spec[part]``, or by ``override``."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # its load report lists heads we drop on purpose; we check the rest
    try:
        return _load_text_part(model_dir, spec, part, override)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _load_text_part(model_dir: Path, spec: dict[str, Any], part: str, override: dict[str, str] | None) -> Any:
    import transformers

    where = f"{model_dir / MODEL_FILE} [{part}]"
    entry = spec.get(part)
    if not isinstance(entry, dict):
        raise ModelLoadError(f"{where}: missing or not an object")
    allowed = TEXT_ENCODER_CLASSES if part == "text_encoder" else TOKENIZER_CLASSES
    if entry.get("class") not in allowed:
        raise ModelLoadError(f"{where}: unsupported class {entry.get('class')!r}; supported: {sorted(allowed)}")
    cls = getattr(transformers, entry["class"].split(".", 1)[1])
    options = {"add_pooling_layer": False} if entry["class"] == "transformers.BertModel" else {}
    source = override or entry.get("source")
    if not isinstance(source, dict) or not ({"path", "hub_id"} & set(source)):
        raise ModelLoadError(f"{where}: 'source' must be {{'path': DIR}} or {{'hub_id': ID, 'revision': REV}}")
    if "path" in source:
        base = Path(source["path"]) if override else inside(model_dir, source["path"], where)
        folder = text_part_folder(base, part)
        if not folder.is_dir():
            raise WeightsNotFoundError(f"{part} folder not found: {folder}")
        if part == "tokenizer" and not any((folder / name).is_file() for name in TOKENIZER_FILES):
            # transformers would build an empty tokenizer that maps every word to the unknown token
            raise WeightsNotFoundError(f"no tokenizer in {folder} (looked for {', '.join(TOKENIZER_FILES)}, and for "
                                       f"a tokenizer/ subfolder)")
        checkpoint = _text_checkpoint_dtypes(folder) if part == "text_encoder" else None
        try:
            loaded = cls.from_pretrained(str(folder), local_files_only=True, **options, **_info(part))
        except pickle.UnpicklingError as exc:  # weights_only refused the pickle; torch's advice is to turn it off
            raise ModelLoadError(_pickled_objects_message(folder, exc)) from None
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(f"cannot load {part} from {folder}: {_first_line(exc)}") from None
        origin = str(folder)
    else:
        subfolder = source.get("subfolder", part)
        try:
            loaded = cls.from_pretrained(source["hub_id"], revision=source.get("revision", "main"),
                                         subfolder=subfolder, **options, **_info(part))
        except pickle.UnpicklingError as exc:
            raise ModelLoadError(_pickled_objects_message(f"{source['hub_id']}/{subfolder}", exc)) from None
        except (RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(f"cannot load {part} from hub id {source['hub_id']!r}: {_first_line(exc)}") from None
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"{part} not available from hub id {source['hub_id']!r} revision {source.get('revision')!r} "
                f"subfolder {subfolder!r}: {exc}. Pass a local folder instead "
                "(load_model(..., text_encoder=DIR) or --text-encoder DIR).") from exc
        checkpoint = None
        origin = f"{source['hub_id']}@{source.get('revision', 'main')}/{subfolder}"
    if part != "text_encoder":
        max_length = entry.get("max_length")
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
                raise ModelLoadError(f"{where}: max_length must be an integer >= 3, got {max_length!r}")
            loaded.model_max_length = max_length
        return loaded
    loaded, info = loaded
    unfilled = sorted(info.get("missing_keys", [])) + sorted(str(k) for k in info.get("mismatched_keys", []))
    if unfilled:
        raise ModelLoadError(f"{part} from {origin} leaves {len(unfilled)} parameters unfilled or of the wrong shape "
                             f"(e.g. {unfilled[:3]}): these weights are not for {entry['class']}")
    if checkpoint:
        _check_text_dtypes(loaded, *checkpoint)
    check_finite(loaded, f"{part} {origin}")
    return loaded.eval().requires_grad_(False)


_TEXT_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")
"""The weight files transformers looks for, in its order of preference."""


def _text_checkpoint_dtypes(folder: Path) -> tuple[dict[str, torch.dtype], str] | None:
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
        shards = read_json_object(path).get("weight_map")
        if not isinstance(shards, dict) or not all(isinstance(shard, str) for shard in shards.values()):
            raise ModelLoadError(f"{path}: 'weight_map' must map weight names to shard file names")
        dtypes: dict[str, torch.dtype] = {}
        for shard in sorted(set(shards.values())):
            dtypes.update(_file_dtypes(inside(folder, shard, str(path))))
        return dtypes, str(path)
    return None


def _file_dtypes(path: Path) -> dict[str, torch.dtype]:
    if path.suffix == ".safetensors":
        return {key: entry[0] for key, entry in _safetensors_header(path).items()}
    return {key: value.dtype for key, value in read_torch_state(path, mmap=True).items()}


def _check_text_dtypes(model: nn.Module, dtypes: dict[str, torch.dtype], origin: str) -> None:
    """Non-floating checkpoint tensors that fill floating parameters (a checkpoint may prefix the model's names,
    as BERT's ``bert.`` does) are refused, naming the file, key and dtype."""
    names = [name for name, parameter in model.named_parameters() if parameter.is_floating_point()]
    for key, dtype in dtypes.items():
        if not dtype.is_floating_point and any(key == name or key.endswith(f".{name}") for name in names):
            raise ModelLoadError(_not_floating(origin, key, dtype, type(model).__name__))


def _info(part: str) -> dict[str, bool]:
    return {"output_loading_info": True} if part == "text_encoder" else {}


def save_model_dir(out_dir: Path, spec: dict[str, Any], networks: dict[str, nn.Module],
                   text_encoder: nn.Module | None = None, tokenizer: Any = None) -> Path:
    """Write ``model.json``, one safetensors per network with weights, and the text folders if given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {"format": MODEL_FORMAT, **spec}
    for part, network in networks.items():
        state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
        if state:
            save_file(state, str(out_dir / f"{part}.safetensors"))
            spec[part] = {**spec[part], "weights": f"{part}.safetensors"}
    if text_encoder is not None:
        text_encoder.save_pretrained(out_dir / "text_encoder")
        spec["text_encoder"] = {**spec.get("text_encoder", {}), "class": f"transformers.{type(text_encoder).__name__}",
                                "source": {"path": "."}}
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir / "tokenizer")
        tokenizer_class = "transformers.BertTokenizer" if "Bert" in type(tokenizer).__name__ else \
            "transformers.CLIPTokenizer"
        spec["tokenizer"] = {**spec.get("tokenizer", {}), "class": tokenizer_class, "source": {"path": "."}}
    (out_dir / MODEL_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return out_dir
