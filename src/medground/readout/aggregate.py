"""Recorded attention sums -> one map per phrase in the model's square (before smoothing).

Per layer the sum of per-step normalised maps is bilinearly upsampled (align_corners False) and the
layers are averaged; since resizing is linear, this equals the official per-step resize-then-mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def average_attention_maps(per_layer: dict[str, torch.Tensor], steps: int, size: int) -> torch.Tensor:
    """(P, h, w) sums per layer over ``steps`` -> (P, size, size) mean over layers and steps."""
    if not per_layer or steps < 1:
        raise ValueError("no attention was recorded: the window or the layer list is empty")
    total = torch.zeros(())
    for maps in per_layer.values():
        total = total + F.interpolate(maps[:, None].float().cpu(), size=(size, size), mode="bilinear",
                                      align_corners=False)[:, 0]
    return total / (len(per_layer) * steps)
