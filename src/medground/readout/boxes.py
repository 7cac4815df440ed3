"""Boxes around the connected regions of a foreground mask."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medground.results import GroundedBox


def boxes_from_mask(mask: np.ndarray, heatmap: np.ndarray) -> list[GroundedBox]:
    """One box per 8-connected component of ``mask``, highest mean heatmap first."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    scores = ndimage.mean(np.nan_to_num(heatmap, nan=0.0), labels, index=np.arange(1, count + 1))
    boxes = []
    for region, score in zip(ndimage.find_objects(labels), scores):
        rows, cols = region
        boxes.append(GroundedBox(int(cols.start), int(rows.start), int(cols.stop - cols.start),
                                 int(rows.stop - rows.start), float(score)))
    return sorted(boxes, key=lambda box: (-box.score, box.y, box.x))
