"""Pictures: a heatmap overlay per phrase and contact sheets of several."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patches  # noqa: E402

from medground.images import Box  # noqa: E402
from medground.readout.boxes import GroundedBox  # noqa: E402


def draw_overlay(ax, image: np.ndarray, heatmap: np.ndarray, title: str,
                 predicted: Sequence[GroundedBox] = (), truth: Sequence[Box] = ()) -> None:
    """Image in gray, the heatmap in colour where it is > 0, truth boxes green, predicted boxes red."""
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    shown = np.ma.masked_where(~(np.nan_to_num(heatmap, nan=0.0) > 0), heatmap)
    ax.imshow(shown, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="nearest")
    for x, y, w, h in truth:
        ax.add_patch(patches.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="lime", lw=1.5))
    for box in predicted[:3]:
        ax.add_patch(patches.Rectangle((box.x - 0.5, box.y - 0.5), box.w, box.h, fill=False, ec="red", lw=1.2,
                                       ls="--"))
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def save_overlay(path: Path, image: np.ndarray, heatmap: np.ndarray, title: str,
                 predicted: Sequence[GroundedBox] = (), truth: Sequence[Box] = ()) -> Path:
    height, width = image.shape
    scale = 5.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(width * scale, 2.5), max(height * scale, 2.5) + 0.4))
    draw_overlay(ax, image, heatmap, title, predicted, truth)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def save_contact_sheet(path: Path, panels: Sequence[dict], columns: int = 4) -> Path:
    """``panels``: dicts with image, heatmap, title and optional predicted / truth boxes."""
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        draw_overlay(ax, panel["image"], panel["heatmap"], panel["title"], panel.get("predicted", ()),
                     panel.get("truth", ()))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
