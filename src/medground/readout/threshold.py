"""Smoothing, normalisation and thresholding of a model-space map.

The official order: Gaussian (sigma in pixels of the upsampled map, scipy reflect mode) -> min-max ->
two-class multi-Otsu -> soft map zeroed below the threshold. All in float32 as the official code ran.
``gmm`` is Generate-to-Ground's threshold (``util_scripts/foreground_masks.py``): a two-component Gaussian mixture
fitted to the map's values (scikit-learn, its defaults but a fixed ``random_state`` so runs repeat), threshold = the
mean of the two component means, then the orphan-pixel filter: an interior pixel is foreground when at least 5 of
the 9 pixels of its 3x3 neighbourhood are (their code runs the mixture first, then the filter; the border keeps its
thresholded value).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_multiotsu

from medground.readout.maps import min_max


def gmm_threshold(values: np.ndarray) -> float:
    """Generate-to-Ground's threshold: the mean of the two component means of a Gaussian mixture on ``values``."""
    from sklearn.mixture import GaussianMixture

    mixture = GaussianMixture(n_components=2, random_state=0).fit(values.reshape(-1, 1).astype(np.float64))
    return float(np.mean(mixture.means_))


def remove_orphans(mask: np.ndarray) -> np.ndarray:
    """Interior pixels become foreground iff >= 5 of their 3x3 neighbourhood (themselves included) are."""
    counts = ndimage.correlate(mask.astype(np.int32), np.ones((3, 3), dtype=np.int32), mode="constant")
    out = mask.copy()
    out[1:-1, 1:-1] = counts[1:-1, 1:-1] >= 5
    return out


def smooth_and_threshold(heatmap: np.ndarray, sigma: float, threshold: str) -> tuple[np.ndarray, np.ndarray]:
    """Model-space map -> (final map, foreground mask), both (S, S). A flat map gives zeros and an empty mask.

    Args:
        heatmap: the (S, S) activation map in the model's square, any scale (it is min-max normalised here).
        sigma: Gaussian sigma in pixels of that map; 0 skips the smoothing.
        threshold: ``otsu`` or ``gmm`` zero the map outside the foreground (the paper's soft map); ``none`` keeps the
            soft map and the mask is every pixel above zero.
    """
    smoothed = ndimage.gaussian_filter(heatmap.astype(np.float32), sigma=sigma) if sigma > 0 else heatmap
    normalised = min_max(torch.from_numpy(np.ascontiguousarray(smoothed, dtype=np.float32))).numpy()
    if normalised.max() <= 0:
        return normalised, np.zeros(normalised.shape, dtype=bool)
    if threshold == "none":
        return normalised, normalised > 0
    if threshold == "gmm":
        mask = remove_orphans(normalised > gmm_threshold(normalised))
    else:
        mask = normalised > threshold_multiotsu(normalised, classes=2)[0]
    return normalised * mask, mask
