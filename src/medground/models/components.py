"""The network classes a model directory may name, and the one autoencoder medground defines itself.

Only classes listed here can be built from a ``model.json``: a model description is data, never an
instruction to import arbitrary code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medground.errors import ModelLoadError


class PixelUnshuffleAutoencoder(nn.Module):
    """A fixed, lossless 'autoencoder': pixel-unshuffle to latents, pixel-shuffle back. No weights.

    It keeps the (z_mu, z_sigma) interface of MONAI's AutoencoderKL so the engine treats both alike.
    """

    def __init__(self, in_channels: int = 1, factor: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.factor = factor

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = F.pixel_unshuffle(images * 2.0 - 1.0, self.factor)
        return latents, torch.zeros_like(latents)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (F.pixel_shuffle(latents, self.factor) + 1.0) / 2.0


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


def network_class(name: str) -> type[nn.Module]:
    try:
        return NETWORK_CLASSES[name]()
    except KeyError:
        raise ModelLoadError(f"unknown network class {name!r}; supported: {sorted(NETWORK_CLASSES)}") from None
