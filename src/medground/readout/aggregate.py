"""Recorded attention sums -> one map per phrase in a square (before smoothing).

Per layer the step-weighted sum of the per-step maps is upsampled (bilinear, align_corners False, or nearest) and the
layers are averaged with their weights; since resizing is linear, this equals the official per-step resize-then-mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(P, h, w) -> (P, size, size)."""
    options = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[:, None].float().cpu(), size=(size, size), mode=mode, **options)[:, 0]


def average_attention_maps(per_layer: dict[str, torch.Tensor], total_weight: float, size: int,
                           mode: str = "bilinear", layer_weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """(P, h, w) step-weighted sums per layer -> (P, size, size) weighted mean over layers and steps.

    ``layer_weights`` is keyed by layer path: ``per_layer`` comes in the order the layers ran, which need not be the
    order they were listed in (diffusers lists up_blocks before mid_block)."""
    if not per_layer or not total_weight > 0:
        raise ValueError("no attention was recorded: the window or the layer list is empty")
    weights = {path: layer_weights[path] if layer_weights is not None else 1.0 for path in per_layer}
    total = torch.zeros(())
    for path, maps in per_layer.items():
        total = total + weights[path] * upsample(maps, size, mode)
    return total / (sum(weights.values()) * total_weight)
