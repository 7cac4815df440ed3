"""Bimodal Bias Merging (Generate-to-Ground, Nuetzel et al., MIDL 2025; ``evaluation/compute_bbox.py``).

Two biases, both averaged over every grid position and every recorded layer after nearest upsampling to the map's
side S: the image bias I = attention to the start token in the image-conditioned (forward-noised) passes, and the
text bias T = attention to the phrase tokens while the model generates an image from the phrase alone (classifier-
free guidance, fixed noise). Per (position, layer) the two S x S maps are multiplied as matrices and averaged:
M = mean(I @ T). With s = max(0, SSIM(I, T)) on their 8-bit images and A the usual activation map (both min-max
normalised), the merged map is

    2 (1 - s) s (M + A + M A) / 2  +  (1 - s)^2 A  +  s^2 M

so when the biases look alike (s -> 1) the merged bias M dominates, and when they differ the activation does.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

from medground.readout.maps import min_max, resize_square


def _eight_bit(values: torch.Tensor) -> np.ndarray:
    return np.round(min_max(values).numpy() * 255).astype(np.uint8)


def merge_biases(activation: torch.Tensor, image_bias: dict[str, list[torch.Tensor]],
                 text_bias: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """(P, S, S) activation and per-layer, per-position biases -> (P, S, S) merged map in [0, 1].

    Args:
        activation: the activation map A, (P, S, S) (the Grounder merges at the latent's side, then resizes).
        image_bias: per layer, the (P, h, w) start-token maps at every grid position (``RecordedAttention``).
        text_bias: per layer, the (P, h, w) phrase maps of the text-only generation at the same positions.
    """
    side = activation.shape[-1]
    pairs = [(resize_square(i, side, "nearest"), resize_square(t, side, "nearest"))
             for layer in image_bias for i, t in zip(image_bias[layer], text_bias[layer])]
    merged = torch.stack([i @ t for i, t in pairs]).mean(dim=0)
    image_mean = torch.stack([i for i, _ in pairs]).mean(dim=0)
    text_mean = torch.stack([t for _, t in pairs]).mean(dim=0)
    m = torch.from_numpy(_eight_bit(merged).astype(np.float32) / 255.0)  # G2G rounds M through 8 bits
    a = min_max(activation.float())
    out = []
    for row in range(activation.shape[0]):
        s = max(0.0, float(structural_similarity(_eight_bit(image_mean[row]), _eight_bit(text_mean[row]))))
        out.append(2 * (1 - s) * s * ((m[row] + a[row] + m[row] * a[row]) / 2) + (1 - s) ** 2 * a[row]
                   + s**2 * m[row])
    return torch.stack(out)
