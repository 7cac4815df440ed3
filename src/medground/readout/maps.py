"""The two operations on square maps that every read-out step uses: min-max normalisation and resizing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medground.errors import ConfigError

RESIZE_MODES = ("bilinear", "nearest")


def min_max(maps: torch.Tensor, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Each map scaled to [0, 1] over ``dims``; a constant map becomes all zeros (the official code's 0 / 0 made it
    NaN)."""
    dims = tuple(dims)
    low = maps.amin(dim=dims, keepdim=True)
    span = maps.amax(dim=dims, keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


def resize_square(maps: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(P, h, w) -> (P, size, size) float32 on the CPU; bilinear with align_corners False, as the official code.

    Args:
        maps: (P, h, w) maps on any device.
        size: the output side.
        mode: ``bilinear`` or ``nearest``; another is a ConfigError.
    """
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {list(RESIZE_MODES)}, got {mode!r}")
    options = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[:, None].float().cpu(), size=(size, size), mode=mode, **options)[:, 0]
