"""The one way to load a model: a known name, a model directory, a family's own folder layout or a hub id.

``load_model`` resolves where the model is, then picks its family from the registry (``backbones.base.FAMILIES``):
a medground model directory names its family in ``model.json``; any other folder is offered to each family in turn
(the diffusers family recognises a pipeline folder by its ``model_index.json``). The family reads its own format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medground.backbones.base import FAMILIES, Backbone, family_class
from medground.backbones.model_dir import MODEL_FILE, hub_snapshot, parse_source, read_spec
from medground.errors import ModelLoadError, WeightsNotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
KNOWN_MODELS: dict[str, Path] = {
    "toy": PACKAGE_DIR / "toy" / "model",
    "toy-sd": PACKAGE_DIR / "toy" / "model-sd",
}
"""Names ``load_model`` resolves without a path: the trained toy models shipped inside the package."""
DEVICE_TYPES = ("cpu", "cuda", "mps")


def load_model(path_or_name: str | Path = "toy", device: str | torch.device = "cpu",
               text_encoder: str | None = None) -> Backbone:
    """Load a model with strict checks.

    Args:
        path_or_name: a known name (``toy``, ``toy-sd``), a medground model directory, a folder another family
            recognises (a diffusers pipeline folder with ``model_index.json``) or ``hub-id[@revision]``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        text_encoder: where the text encoder and tokenizer come from instead: a local folder (with
            ``text_encoder/`` and ``tokenizer/`` subfolders, or the files directly) or ``hub-id[@revision]``.
    """
    device = check_device(device)
    folder = resolve_model_source(path_or_name)
    text_source = parse_source(text_encoder) if text_encoder else None
    family, spec = family_of(folder)
    return family.from_spec(folder, spec, text_source).to(device)


def family_of(folder: Path) -> tuple[type[Backbone], dict[str, Any]]:
    """The family that reads ``folder`` and the model description it reads from it."""
    if (folder / MODEL_FILE).is_file():
        spec = read_spec(folder)
        return family_class(spec["family"], str(folder / MODEL_FILE)), spec
    for name in FAMILIES:
        family = family_class(name, str(folder))
        spec = family.spec_of_folder(folder)
        if spec is not None:
            return family, spec
    raise WeightsNotFoundError(f"no {MODEL_FILE} (medground model) in {folder}, and no model family recognises the "
                               f"folder ({', '.join(family_class(n, '').folder_hint for n in FAMILIES)}); known model "
                               f"names: {sorted(KNOWN_MODELS)}")


def check_device(device: str | torch.device) -> torch.device:
    """``device`` parsed and checked to exist on this machine, so a wrong one fails before any weights are read
    (ModelLoadError)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps ({exc})") from None
    if parsed.type not in DEVICE_TYPES:
        raise ModelLoadError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or mps")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but this PyTorch has no MPS device (Apple silicon)")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but this PyTorch sees no CUDA device")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices are visible")
    return parsed


def resolve_model_source(path_or_name: str | Path) -> Path:
    """A known name -> its shipped folder; an existing path -> itself; ``hub-id[@revision]`` -> the hub snapshot."""
    if not isinstance(path_or_name, (str, Path)):
        raise ModelLoadError(f"a model is a known name {sorted(KNOWN_MODELS)}, a folder or hub-id[@revision]; got "
                             f"{path_or_name!r}")
    if isinstance(path_or_name, str) and path_or_name in KNOWN_MODELS:
        return KNOWN_MODELS[path_or_name]
    path = Path(path_or_name)
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the file system
        raise WeightsNotFoundError(f"no model at {str(path)[:200]}: {exc.strerror or exc}") from None
    if exists:
        if not path.is_dir():
            raise WeightsNotFoundError(f"{path} is a file; a model is a folder (with {MODEL_FILE} or a family's "
                                       f"own layout), a known name {sorted(KNOWN_MODELS)} or hub-id[@revision]")
        return path
    text = str(path_or_name)
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1 and " " not in text:
        source = parse_source(text)
        return hub_snapshot(source["hub_id"], source["revision"])
    raise WeightsNotFoundError(f"no model at {path} (not a folder, a known name {sorted(KNOWN_MODELS)} or "
                               "a hub id such as org/name@revision)")
