"""Per-sample grounding metrics on original-size heatmaps (NaN = outside the model's crop).

Definitions follow the official evaluation code of Vilouras et al. (docs/method.md section 7). Boxes are
(x, y, w, h) in heatmap pixels; a box covers rows [y, y + h) and columns [x, x + w) (rounded half up
for non-integer boxes, clipped to the image). Aggregation over samples lives in ``aggregate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from medground.errors import BoxError, ConfigError, ImageError
from medground.geometry import box_pixel_slices
from medground.results import Box

DEFAULT_IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _check(heatmap: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ImageError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    if len(boxes) == 0:
        raise BoxError("at least one box is needed")
    return heatmap


def box_union_mask(shape: tuple[int, int], boxes: Sequence[Box]) -> np.ndarray:
    """Boolean mask of the union of the boxes."""
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        mask[box_pixel_slices(box, *shape)] = True
    return mask


def _nan_stats(values: np.ndarray) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.mean()), float(((finite - finite.mean()) ** 2).mean())


def cnr(heatmap: np.ndarray, boxes: Sequence[Box], signed: bool = False) -> float:
    """Contrast-to-noise ratio, mean over boxes: (mu_in - mu_out) / sqrt(var_in + var_out).

    As in the official code, boxes are visited in order and each box is blanked (NaN) after its own
    contrast is taken, so for box k the outside excludes boxes 1..k and its inside excludes earlier
    boxes. Variances are NaN-aware population variances; a NaN ratio (e.g. a constant map) counts as 0.

    Args:
        heatmap: (H, W) map in original image pixels; NaN pixels (outside the model's crop) are left out.
        boxes: (x, y, w, h) boxes in the same pixels, at least one; their order matters (above).
        signed: keep the sign of mu_in - mu_out; False gives the reported |CNR|.

    Raises:
        ImageError: a heatmap that is not 2-D.
        BoxError: no box, or a box with no pixel inside the image.
    """
    values = _check(heatmap, boxes).copy()
    ratios = []
    for box in boxes:
        region = box_pixel_slices(box, *values.shape)
        mu_in, var_in = _nan_stats(values[region])
        values[region] = np.nan
        mu_out, var_out = _nan_stats(values)
        difference = mu_in - mu_out if signed else abs(mu_in - mu_out)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = difference / np.sqrt(var_in + var_out)
        ratios.append(0.0 if np.isnan(ratio) else float(ratio))
    return float(np.mean(ratios))


def miou(heatmap: np.ndarray, boxes: Sequence[Box], thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS) -> float:
    """Mean over thresholds of IoU(heatmap > thr, union of boxes); NaN pixels are never foreground.

    Args:
        heatmap: (H, W) map in original image pixels (the default thresholds assume values in [0, 1]).
        boxes: (x, y, w, h) boxes in the same pixels; their union is the target.
        thresholds: the thresholds the IoU is averaged over (the official 0.1, ..., 0.5).

    Raises:
        ImageError, BoxError: as ``cnr``.
    """
    values = _check(heatmap, boxes)
    target = box_union_mask(values.shape, boxes)
    ious = []
    for threshold in thresholds:
        predicted = np.nan_to_num(values, nan=-np.inf) > threshold
        union = np.logical_or(predicted, target).sum()
        ious.append(np.logical_and(predicted, target).sum() / union)
    return float(np.mean(ious))


def auroc(heatmap: np.ndarray, boxes: Sequence[Box], bins: int | None = 5) -> float:
    """Pixel AUROC of the heatmap against the union of boxes; NaN pixels are excluded.

    Args:
        heatmap: (H, W) map in original image pixels.
        boxes: (x, y, w, h) boxes in the same pixels; their union is the positive class.
        bins: 5 is torcheval's ``binary_binned_auroc(threshold=5)`` used by the paper: thresholds
            linspace(0, 1, bins), prediction = value >= threshold, trapezoid over the operating points from
            (0, 0), normalised by the counts at threshold 0 (so values must lie in [0, 1]). None gives the exact
            AUROC (Mann-Whitney, ties count half).

    Returns:
        The AUROC; 0.5 when the boxes cover every valid pixel or none.

    Raises:
        ConfigError: ``bins`` below 2.
        ImageError, BoxError: as ``cnr``.
    """
    values = _check(heatmap, boxes)
    target = box_union_mask(values.shape, boxes)
    valid = ~np.isnan(values)
    scores, labels = values[valid], target[valid]
    if bins is None:
        positives, negatives = int(labels.sum()), int((~labels).sum())
        if positives == 0 or negatives == 0:
            return 0.5
        ranks = rankdata(scores)
        return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))
    if bins < 2:
        raise ConfigError(f"bins must be >= 2 or None, got {bins}")
    thresholds = np.linspace(0.0, 1.0, bins)[::-1]
    tp = np.array([0.0] + [float(((scores >= t) & labels).sum()) for t in thresholds])
    fp = np.array([0.0] + [float(((scores >= t) & ~labels).sum()) for t in thresholds])
    factor = tp[-1] * fp[-1]
    if factor == 0:
        return 0.5
    return float(np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2) / factor)
