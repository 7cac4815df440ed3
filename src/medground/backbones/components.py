"""The one network medground defines itself: a fixed, lossless stand-in for an autoencoder (the MONAI toy's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelUnshuffleAutoencoder(nn.Module):
    """Pixel-unshuffle to latents, pixel-shuffle back; no weights, so its 'posterior' is exact.

    Images in [0, 1] map to [-1, 1] first, as a trained autoencoder's input would.
    """

    def __init__(self, in_channels: int = 1, factor: int = 2) -> None:
        super().__init__()
        if factor < 1 or in_channels < 1:
            raise ValueError(f"factor and in_channels must be >= 1, got {factor}, {in_channels}")
        self.in_channels = in_channels
        self.factor = factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) in [0, 1] -> (B, C * factor^2, S / factor, S / factor) in [-1, 1]."""
        return F.pixel_unshuffle(images * 2.0 - 1.0, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The exact inverse of ``encode``."""
        return (F.pixel_shuffle(latents, self.factor) + 1.0) / 2.0
