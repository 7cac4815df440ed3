"""A text-conditioned latent diffusion model as medground uses it, and its on-disk directory format.

A model directory holds ``model.json`` (each component's class and arguments, the noise schedule,
latent scale, image size, grounding defaults and provenance), one safetensors file per network, and
``text_encoder/`` + ``tokenizer/`` folders in the transformers layout, or hub ids with a pinned revision.
The shipped toy model and a converted paper model use the same format and the same loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from medground.engine.attention import set_fused_attention
from medground.engine.schedule import NoiseSchedule
from medground.errors import ModelLoadError, WeightsNotFoundError
from medground.models.components import network_class
from medground.models.registry import KNOWN_MODELS, resolve_model_dir

MODEL_FORMAT = "medground-ldm/1"
MODEL_FILE = "model.json"
TEXT_CLASSES = {"transformers.CLIPTextModel", "transformers.CLIPTokenizer"}


@dataclass
class LatentDiffusionModel:
    """Frozen networks plus the facts needed to run them (schedule, latent scale, image size)."""

    name: str
    autoencoder: nn.Module
    unet: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    noise_schedule: NoiseSchedule
    latent_scale: float
    image_size: int
    grounding_defaults: dict[str, Any] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> LatentDiffusionModel:
        for network in (self.autoencoder, self.unet, self.text_encoder):
            network.to(device)
        return self

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) images in [0, 1] -> scaled latents: posterior mean x latent_scale (no sampling)."""
        z_mu, _ = self.autoencoder.encode(images.to(self.device))
        return z_mu * self.latent_scale

    @torch.no_grad()
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts padded to the encoder's length -> last hidden states (B, L, D), no attention mask."""
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.device))[0]


def load_model(path_or_name: str | Path = "toy", device: str | torch.device = "cpu",
               text_encoder: str | None = None) -> LatentDiffusionModel:
    """Load a model directory (or a known name such as ``toy``) with strict weight checks.

    ``text_encoder`` overrides where the text encoder and tokenizer come from: a local folder (with
    ``text_encoder/`` and ``tokenizer/`` subfolders, or the files directly) or ``hub-id[@revision]``.
    """
    model_dir = resolve_model_dir(path_or_name)
    spec_path = model_dir / MODEL_FILE
    if not spec_path.is_file():
        hint = "" if str(path_or_name) in KNOWN_MODELS else f"; known model names: {sorted(KNOWN_MODELS)}"
        raise WeightsNotFoundError(f"no model description at {spec_path}{hint}")
    spec = json.loads(spec_path.read_text())
    if spec.get("format") != MODEL_FORMAT:
        raise ModelLoadError(f"{spec_path}: format is {spec.get('format')!r}, expected {MODEL_FORMAT!r}")
    text_source = parse_text_source(text_encoder) if text_encoder else None
    model = LatentDiffusionModel(
        name=spec.get("name", model_dir.name),
        autoencoder=_build_network(model_dir, spec, "autoencoder"),
        unet=set_fused_attention(_build_network(model_dir, spec, "unet"), enabled=True),
        text_encoder=_load_text_part(model_dir, spec, "text_encoder", text_source),
        tokenizer=_load_text_part(model_dir, spec, "tokenizer", text_source),
        noise_schedule=NoiseSchedule(**spec["noise_schedule"]),
        latent_scale=float(spec["latent_scale"]),
        image_size=int(spec["image_size"]),
        grounding_defaults=dict(spec.get("grounding_defaults", {})),
        description=spec,
    )
    return model.to(device)


def _build_network(model_dir: Path, spec: dict, part: str) -> nn.Module:
    """Instantiate an allow-listed class and load its safetensors strictly (if it has weights)."""
    if part not in spec:
        raise ModelLoadError(f"{model_dir / MODEL_FILE} has no {part!r} entry")
    entry = spec[part]
    cls = network_class(entry["class"])
    args = dict(entry.get("args", {}))
    network = cls(**args)
    if entry.get("weights"):
        weights_path = model_dir / entry["weights"]
        if not weights_path.is_file():
            raise WeightsNotFoundError(f"{part} weights not found: {weights_path} (named in {model_dir / MODEL_FILE})")
        state = load_file(str(weights_path))
        result = network.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelLoadError(
                f"{weights_path} does not match {entry['class']}({args}): "
                f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
                f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})"
            )
    return network.eval().requires_grad_(False)


def parse_text_source(source: str) -> dict[str, str]:
    """``DIR`` -> local folder; ``hub-id[@revision]`` -> hub reference (only if DIR does not exist)."""
    if Path(source).exists():
        return {"path": str(Path(source).resolve())}
    hub_id, _, revision = source.partition("@")
    return {"hub_id": hub_id, "revision": revision or "main"}


def text_part_folder(base: Path, part: str) -> Path:
    """``base/part`` in the diffusers layout (``text_encoder/``, ``tokenizer/``), else ``base`` itself."""
    return base / part if (base / part).is_dir() else base


def _load_text_part(model_dir: Path, spec: dict, part: str, override: dict[str, str] | None) -> Any:
    from transformers import CLIPTextModel, CLIPTokenizer

    entry = spec[part]
    if entry["class"] not in TEXT_CLASSES:
        raise ModelLoadError(f"unsupported {part} class {entry['class']!r}; supported: {sorted(TEXT_CLASSES)}")
    cls = CLIPTextModel if part == "text_encoder" else CLIPTokenizer
    source = override or entry["source"]
    if "path" in source:
        folder = text_part_folder(model_dir / source["path"], part)
        if not folder.is_dir():
            raise WeightsNotFoundError(f"{part} folder not found: {folder}")
        try:
            loaded = cls.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {part} from {folder}: {exc}") from exc
    else:
        try:
            loaded = cls.from_pretrained(
                source["hub_id"], revision=source.get("revision", "main"), subfolder=source.get("subfolder", part)
            )
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(
                f"{part} not available from hub id {source['hub_id']!r} revision {source.get('revision')!r} "
                f"subfolder {source.get('subfolder', part)!r}: {exc}. Pass a local folder instead "
                "(load_model(..., text_encoder=DIR) or --text-encoder DIR)."
            ) from exc
    return loaded.eval().requires_grad_(False) if part == "text_encoder" else loaded


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
        spec["text_encoder"] = {"class": "transformers.CLIPTextModel", "source": {"path": "."}}
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir / "tokenizer")
        spec["tokenizer"] = {"class": "transformers.CLIPTokenizer", "source": {"path": "."}}
    (out_dir / MODEL_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return out_dir
