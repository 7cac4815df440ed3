"""The MONAI family: ``DiffusionModelUNet`` + ``AutoencoderKL`` (MONAI core >= 1.4), the paper's model.

MONAI specifics live here and nowhere else: the UNet's ``timesteps=`` / ``context=`` call, the autoencoder's
``(z_mu, z_sigma)`` encode, and the attention blocks' ``save_attn`` / ``att_mat`` / ``use_flash_attention``
flags that capture turns on for the recorded layers only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from medground.backbones.base import AttentionSink, Backbone
from medground.backbones.components import PixelUnshuffleAutoencoder
from medground.backbones.model_dir import MODEL_FILE, spec_parts
from medground.backbones.weights import build_network, inside, load_state_strict, read_safetensors
from medground.errors import ModelLoadError

PAPER_CROSS_ATTENTION_LAYERS = (
    "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "middle_block.attention.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn2",
)
"""The official layer indices [3, 4, 6, 7] of the paper's UNet as module paths (all 16x16 for a 64x64 latent)."""


def _monai_autoencoder_kl() -> type[nn.Module]:
    from monai.networks.nets import AutoencoderKL

    return AutoencoderKL


def _monai_unet() -> type[nn.Module]:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet


NETWORK_CLASSES: dict[str, Callable[[], type[nn.Module]]] = {
    "monai.AutoencoderKL": _monai_autoencoder_kl,
    "monai.DiffusionModelUNet": _monai_unet,
    "medground.PixelUnshuffleAutoencoder": lambda: PixelUnshuffleAutoencoder,
}
"""Only these classes can be built from a ``model.json``: a model description is data, never code to import."""


def network_class(name: object, where: str = "model.json") -> type[nn.Module]:
    """The allow-listed class ``name`` (``NETWORK_CLASSES``), imported now; any other name is a ModelLoadError."""
    if name not in NETWORK_CLASSES:
        raise ModelLoadError(f"{where}: unknown network class {name!r}; supported: {sorted(NETWORK_CLASSES)}")
    return NETWORK_CLASSES[str(name)]()


def _is_attention_block(module: nn.Module) -> bool:
    return hasattr(module, "use_flash_attention") and hasattr(module, "save_attn")


def _use_fused_attention(unet: nn.Module) -> nn.Module:
    """MONAI defaults to explicit attention; fused SDPA is the same math and faster, so every block gets it
    (capture switches the recorded ones back to explicit probabilities, and restores them)."""
    for module in unet.modules():
        if _is_attention_block(module) and getattr(module, "rel_positional_embedding", None) is None:
            module.use_flash_attention = not module.save_attn
    return unet


class MonaiBackbone(Backbone):
    """A Backbone over MONAI's networks (the paper's model, the ``toy``), so they run through the common engine.

    Args:
        unet_args: the UNet's constructor arguments, kept so ``fresh_unet`` can rebuild it.
        *args: ``Backbone``'s arguments.
        **kwargs: ``Backbone``'s keyword arguments.
    """

    family = "monai-ldm"
    default_grounding = {"inference_steps": 300, "gaussian_sigma": 2.5}

    def __init__(self, *args: Any, unet_args: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unet_args = unet_args
        """The UNet's constructor arguments (``fresh_unet`` rebuilds it from them)."""
        _use_fused_attention(self.unet)

    @classmethod
    def from_spec(cls, model_dir: Path, spec: dict[str, Any], text_source: dict[str, str] | None) -> MonaiBackbone:
        autoencoder = _load_network(model_dir, spec, "autoencoder")
        return cls(autoencoder=autoencoder, unet=_load_network(model_dir, spec, "unet"),
                   unet_args=spec["unet"].get("args", {}),
                   **spec_parts(model_dir, spec, text_source, autoencoder_factor(autoencoder)))

    def fresh_unet(self) -> nn.Module:
        return _use_fused_attention(network_class("monai.DiffusionModelUNet")(**self.unet_args))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if isinstance(self.autoencoder, PixelUnshuffleAutoencoder):
            return self.autoencoder.encode(images) * self.latent_scale
        z_mu, _ = self.autoencoder.encode(images)
        return z_mu * self.latent_scale

    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_text_length, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]

    def predict(self, latents: torch.Tensor, timestep: int | torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(timestep, device=latents.device).reshape(-1)  # length 1 or the batch
        return self.unet(latents, timesteps=timesteps, context=context)

    def attention_layers(self, kind: Literal["cross", "self"] = "cross") -> list[str]:
        suffix = "attn2" if kind == "cross" else "attn1"
        return [name for name, module in self.unet.named_modules()
                if name.endswith(suffix) and _is_attention_block(module)]

    def family_defaults(self) -> dict[str, Any]:
        """The paper's four layers where the UNet has them (its layout), else every 16x16-for-64 layer."""
        available = self.attention_layers()
        if all(path in available for path in PAPER_CROSS_ATTENTION_LAYERS):
            layers = list(PAPER_CROSS_ATTENTION_LAYERS)
        else:
            layers = self.layers_at_quarter_resolution()
        return {**self.default_grounding, "cross_attention_layers": layers}

    def _install_capture(self, paths: Sequence[str], sink: AttentionSink) -> Callable[[], None]:
        saved, handles = [], []

        def make_hook(path: str) -> Callable[..., None]:
            def hook(module: nn.Module, _inputs: object, _output: object) -> None:
                probabilities, module.att_mat = module.att_mat, torch.Tensor()
                sink(path, probabilities)

            return hook

        for path in paths:
            module = self.unet.get_submodule(path)
            saved.append((module, module.save_attn, module.use_flash_attention))
            module.save_attn, module.use_flash_attention = True, False
            handles.append(module.register_forward_hook(make_hook(path)))

        def undo() -> None:
            for handle in handles:
                handle.remove()
            for module, save_attn, fused in saved:
                module.save_attn, module.use_flash_attention = save_attn, fused
                module.att_mat = torch.Tensor()

        return undo


def autoencoder_factor(autoencoder: nn.Module) -> int:
    """Downsampling factor of an autoencoder: 2 per MONAI level after the first, or the pixel-unshuffle factor."""
    if isinstance(autoencoder, PixelUnshuffleAutoencoder):
        return autoencoder.factor
    return 2 ** (len(autoencoder.encoder.channels) - 1)


def _load_network(model_dir: Path, spec: dict, part: str) -> nn.Module:
    """Instantiate an allow-listed class and load its safetensors strictly (if it has weights)."""
    where = f"{model_dir / MODEL_FILE} [{part}]"
    entry = spec.get(part)
    if not isinstance(entry, dict):
        raise ModelLoadError(f"{where}: missing or not an object")
    network = build_network(network_class(entry.get("class"), where), entry.get("args", {}), where)
    if entry.get("weights"):
        weights_path = inside(model_dir, entry["weights"], where)
        load_state_strict(network, read_safetensors(weights_path), str(weights_path))
    return network.eval().requires_grad_(False)
