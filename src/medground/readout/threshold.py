"""Smoothing, normalisation and thresholding of a model-space map.

The official order: Gaussian (sigma in pixels of the upsampled map, scipy reflect mode) -> min-max ->
two-class multi-Otsu -> soft map zeroed below the threshold. All in float32 as the official code ran.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu


def normalise_01(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros (instead of the official 0/0 NaN)."""
    low, high = np.nanmin(values), np.nanmax(values)
    if not high > low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def smooth_and_threshold(heatmap: np.ndarray, sigma: float, threshold: str) -> tuple[np.ndarray, np.ndarray]:
    """Model-space map -> (final map, foreground mask), both (S, S). A flat map gives zeros and an empty mask.

    ``threshold="otsu"`` zeroes the map below the Otsu threshold (the paper); ``"none"`` keeps the soft map and
    the mask is every pixel above zero.
    """
    smoothed = ndimage.gaussian_filter(heatmap.astype(np.float32), sigma=sigma) if sigma > 0 else heatmap
    normalised = normalise_01(smoothed.astype(np.float32))
    if normalised.max() <= 0:
        return normalised, np.zeros(normalised.shape, dtype=bool)
    if threshold == "none":
        return normalised, normalised > 0
    mask = normalised > threshold_multiotsu(normalised, classes=2)[0]
    return normalised * mask, mask
