"""Recorded attention -> one map per phrase in a square (before smoothing).

Per layer the step-weighted sum of the per-step maps is resized (bilinear, align_corners False, or nearest) and the
layers are averaged with their weights; since resizing is linear, this equals the official per-step resize-then-mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from medground.errors import ConfigError
from medground.readout.maps import resize_square


def step_weighted_sum(maps: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """(steps * P, h, w) maps of one pass, step-major, -> (P, h, w) sum weighted by each step's weight."""
    steps = len(weights)
    by_step = torch.tensor(list(weights), device=maps.device).reshape(steps, 1, 1, 1)
    return (maps.reshape(steps, -1, *maps.shape[1:]) * by_step).sum(dim=0)


def average_attention_maps(per_layer: dict[str, torch.Tensor], total_weight: float, size: int,
                           mode: str = "bilinear", layer_weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """(P, h, w) step-weighted sums per layer -> (P, size, size) weighted mean over layers and steps.

    Args:
        per_layer: each recorded layer's step-weighted sum, keyed by layer path.
        total_weight: the sum of the step weights the sums were made with.
        size: side of the output maps.
        mode: ``bilinear`` or ``nearest`` resizing.
        layer_weights: by layer path (``per_layer`` comes in the order the layers ran, which need not be the
            order they were listed in: diffusers lists up_blocks before mid_block); None weighs layers equally.
    """
    if not per_layer or not total_weight > 0:
        raise ConfigError("no attention was recorded: the window or the layer list is empty")
    weights = {path: layer_weights[path] if layer_weights is not None else 1.0 for path in per_layer}
    total = torch.zeros(())
    for path, maps in per_layer.items():
        total = total + weights[path] * resize_square(maps, size, mode)
    return total / (sum(weights.values()) * total_weight)
