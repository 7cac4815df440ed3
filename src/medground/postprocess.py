"""Smoothing, normalisation, Otsu thresholding and boxes from masks.

The official order: Gaussian (sigma in pixels of the upsampled map, scipy reflect mode) -> min-max ->
two-class multi-Otsu -> soft map zeroed below the threshold. All in float32 as the official code ran.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
    """Model-space map -> (final soft map, Otsu foreground mask), both (S, S)."""
    smoothed = ndimage.gaussian_filter(heatmap.astype(np.float32), sigma=sigma) if sigma > 0 else heatmap
    normalised = normalise_01(smoothed.astype(np.float32))
    if normalised.max() <= 0:
        return normalised, np.zeros(normalised.shape, dtype=bool)
    mask = normalised > threshold_multiotsu(normalised, classes=2)[0]
    if threshold == "otsu":
        return normalised * mask, mask
    return normalised, mask


@dataclass(frozen=True)
class GroundedBox:
    """A predicted box (x, y, w, h in pixels) around one connected region of the mask."""

    x: int
    y: int
    w: int
    h: int
    score: float
    """Mean heatmap value inside the region."""

    def to_dict(self) -> dict:
        return asdict(self)


def boxes_from_mask(mask: np.ndarray, heatmap: np.ndarray) -> list[GroundedBox]:
    """One box per 8-connected component of ``mask``, highest mean heatmap first."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    scores = ndimage.mean(np.nan_to_num(heatmap, nan=0.0), labels, index=np.arange(1, count + 1))
    boxes = []
    for region, score in zip(ndimage.find_objects(labels), scores):
        rows, cols = region
        boxes.append(GroundedBox(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start,
                                 float(score)))
    return sorted(boxes, key=lambda box: -box.score)
