"""The medground model directory format, and the checked readers every family builds its networks with.

A model directory holds ``model.json`` (family, each component's class and arguments or sub-folder, the noise
schedule, latent scale, image size, grounding defaults, provenance), the networks' weights, and the text
encoder and tokenizer in the transformers layout (or hub ids with a pinned revision). ``medground.loading`` finds
the directory and the family; the family reads its own parts with the helpers here.

Everything read from disk is checked before it is trusted: JSON types, paths that stay inside the directory,
strict weight keys, finite weights, a usable noise schedule and latent scale. Each failure names the file and key.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from medground.backbones.base import NoiseSchedule
from medground.backbones.weights import (
    check_finite,
    check_text_dtypes,
    first_line,
    inside,
    pickled_objects_message,
    read_json_object,
    text_checkpoint_dtypes,
)
from medground.errors import ModelLoadError, WeightsNotFoundError
from medground.outputs import json_bytes, write_atomic

MODEL_FORMAT = "medground-ldm/1"
MODEL_FILE = "model.json"
MAX_IMAGE_SIZE = 2048
"""Larger inputs are refused: a 4096 model input ran for over 12 minutes on a CPU before its first map."""


def parse_source(source: str) -> dict[str, str]:
    """``DIR`` -> a local folder; ``hub-id[@revision]`` -> a hub reference (only when no such folder exists)."""
    if Path(source).exists():
        return {"path": str(Path(source).resolve())}
    hub_id, _, revision = source.partition("@")
    return {"hub_id": hub_id, "revision": revision or "main"}


def hub_snapshot(hub_id: str, revision: str, allow_patterns: list[str] | None = None) -> Path:
    """The local snapshot of a hub repository; offline it works from the cache, and errors name id and revision.

    Args:
        hub_id: the repository, ``org/name``.
        revision: a branch, tag or commit.
        allow_patterns: download only the files matching these globs; None: every file.

    Raises:
        WeightsNotFoundError: the repository or revision is not available (unknown, gated, or offline and not cached).
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, revision=revision, allow_patterns=allow_patterns))
    except Exception as exc:  # the hub client raises many unrelated types for "not available"
        raise WeightsNotFoundError(
            f"model not available from hub id {hub_id!r} revision {revision!r}: {type(exc).__name__}: {exc}. "
            "Download it where the hub is reachable (it is then used from the cache, also with HF_HUB_OFFLINE=1) "
            "or pass a local folder."
        ) from exc



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
    """The model's square input side: a positive multiple of the autoencoder's downsampling factor.

    Args:
        spec: the model description.
        where: names the file in messages.
        factor: the autoencoder's downsampling factor.

    Raises:
        ModelLoadError: a size that is not a positive multiple of ``factor``, or is over ``MAX_IMAGE_SIZE``.
    """
    size = spec.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % factor:
        raise ModelLoadError(f"{where}: image_size must be a positive multiple of the autoencoder's factor {factor}, "
                             f"got {size!r}")
    if size > MAX_IMAGE_SIZE:
        raise ModelLoadError(f"{where}: image_size {size} is over {MAX_IMAGE_SIZE}; one grounding would take hours "
                             "on a CPU and tens of GB of attention memory. Use the size the model was trained at.")
    return size


def spec_latent_scale(spec: dict[str, Any], where: str) -> float:
    """The description's ``latent_scale``: a finite number > 0, else a ModelLoadError naming ``where``."""
    scale = spec.get("latent_scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ModelLoadError(f"{where}: latent_scale must be a finite number > 0, got {scale!r}")
    return float(scale)


def spec_noise_schedule(values: Any, where: str) -> NoiseSchedule:
    """A NoiseSchedule from a description's ``noise_schedule``; a bad key or value is a ModelLoadError naming
    ``where``."""
    if not isinstance(values, dict):
        raise ModelLoadError(f"{where}: noise_schedule must be an object, got {values!r}")
    try:
        return NoiseSchedule(**values)
    except TypeError as exc:
        raise ModelLoadError(f"{where}: noise_schedule {values}: {exc}") from None
    except ModelLoadError as exc:
        raise ModelLoadError(f"{where}: noise_schedule: {exc}") from None



def spec_parts(model_dir: Path, spec: dict[str, Any], text_source: dict[str, str] | None,
               factor: int) -> dict[str, Any]:
    """What every family reads the same way from ``model.json``: text encoder and tokenizer, noise schedule,
    latent scale, image size, name.

    Args:
        model_dir: the model directory.
        spec: its description.
        text_source: where the text encoder and tokenizer come from instead (``parse_source``); None: the
            description's.
        factor: the autoencoder's downsampling factor (``image_size`` must be a multiple of it).

    Returns:
        Keyword arguments of ``Backbone``: text_encoder, tokenizer, noise_schedule, latent_scale, image_size, name,
        description.
    """
    where = str(model_dir / MODEL_FILE)
    return {"text_encoder": load_text_part(model_dir, spec, "text_encoder", text_source),
            "tokenizer": load_text_part(model_dir, spec, "tokenizer", text_source),
            "noise_schedule": spec_noise_schedule(spec.get("noise_schedule"), where),
            "latent_scale": spec_latent_scale(spec, where), "image_size": spec_image_size(spec, where, factor),
            "name": str(spec.get("name", model_dir.name)), "description": spec}


TEXT_ENCODER_CLASSES = {"transformers.CLIPTextModel", "transformers.BertModel"}
TOKENIZER_CLASSES = {"transformers.CLIPTokenizer", "transformers.BertTokenizer"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def text_part_folder(base: Path, part: str) -> Path:
    """``base/part`` in the diffusers layout (``text_encoder/``, ``tokenizer/``), else ``base`` itself."""
    return base / part if (base / part).is_dir() else base


def load_text_part(model_dir: Path, spec: dict[str, Any], part: str, override: dict[str, str] | None) -> Any:
    """The text encoder (frozen, checked finite) or the tokenizer named by ``spec[part]``, or by ``override``.

    Args:
        model_dir: the model directory; a ``path`` source in ``spec`` is relative to it and must stay inside.
        spec: its description; ``spec[part]`` gives the class, the source and, for a tokenizer, ``max_length``.
        part: ``text_encoder`` or ``tokenizer``.
        override: a source that replaces ``spec[part]["source"]`` (``parse_source``): a folder, taken as it is, or
            a hub id; None: the description's.

    Raises:
        WeightsNotFoundError: the folder, the tokenizer files or the hub repository are not there.
        ModelLoadError: an unsupported class, a malformed source, or weights that leave parameters unfilled or are
            not finite.
    """
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
        checkpoint = text_checkpoint_dtypes(folder) if part == "text_encoder" else None
        try:
            loaded = cls.from_pretrained(str(folder), local_files_only=True, **options, **_info(part))
        except pickle.UnpicklingError as exc:  # weights_only refused the pickle; torch's advice is to turn it off
            raise ModelLoadError(pickled_objects_message(folder, exc)) from None
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(f"cannot load {part} from {folder}: {first_line(exc)}") from None
        origin = str(folder)
    else:
        subfolder = source.get("subfolder", part)
        try:
            loaded = cls.from_pretrained(source["hub_id"], revision=source.get("revision", "main"),
                                         subfolder=subfolder, **options, **_info(part))
        except pickle.UnpicklingError as exc:
            raise ModelLoadError(pickled_objects_message(f"{source['hub_id']}/{subfolder}", exc)) from None
        except (RuntimeError, SafetensorError) as exc:
            raise ModelLoadError(f"cannot load {part} from hub id {source['hub_id']!r}: {first_line(exc)}") from None
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
        check_text_dtypes(loaded, *checkpoint)
    check_finite(loaded, f"{part} {origin}")
    return loaded.eval().requires_grad_(False)


def _info(part: str) -> dict[str, bool]:
    return {"output_loading_info": True} if part == "text_encoder" else {}


def save_model_dir(out_dir: Path, spec: dict[str, Any], networks: dict[str, nn.Module],
                   text_encoder: nn.Module | None = None, tokenizer: Any = None) -> Path:
    """Write ``model.json``, one safetensors per network with weights, and the text folders if given.

    Args:
        out_dir: the folder to write (created if needed).
        spec: the description; every network with weights needs its entry ``spec[part]``, which gets ``weights``.
        networks: part name -> module; a module without weights (the pixel-unshuffle autoencoder) writes no file.
        text_encoder: written to ``text_encoder/`` and recorded with its class; None: ``spec`` says where it is.
        tokenizer: written to ``tokenizer/`` and recorded likewise; None: ``spec`` says where it is.

    Returns:
        ``out_dir``.
    """
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
    write_atomic(out_dir / MODEL_FILE, json_bytes(spec))  # last: a folder without it is no model
    return out_dir
