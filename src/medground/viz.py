"""Pictures of records: a heatmap overlay per phrase, contact sheets of several, and several findings on one image.

Drawing only: each picture comes back as PNG bytes (or pixels for the web page); ``outputs`` writes files.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors, patches  # noqa: E402

from medground.results import Box, GroundedBox, GroundedFinding  # noqa: E402


def draw_overlay(ax, image: np.ndarray, heatmap: np.ndarray, title: str,
                 predicted: Sequence[GroundedBox] = (), truth: Sequence[Box] = ()) -> None:
    """Image in gray, the heatmap in colour where it is > 0, truth boxes green, predicted boxes red.

    Args:
        ax (matplotlib.axes.Axes): the matplotlib axes to draw on.
        image: (H, W) pixels in [0, 1].
        heatmap: (H, W) map on the same pixels, in [0, 1]; NaN (outside the crop) is not coloured.
        title: the panel's title.
        predicted: predicted boxes, best first; the first three are drawn (dashed).
        truth: ground-truth (x, y, w, h) boxes in the same pixels.
    """
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


def png_bytes(fig, dpi: int) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def overlay_png(image: np.ndarray, heatmap: np.ndarray, title: str, predicted: Sequence[GroundedBox] = (),
                truth: Sequence[Box] = ()) -> bytes:
    """One phrase's overlay (``draw_overlay``) as PNG bytes, the figure shaped like the image.

    Args:
        image: (H, W) pixels in [0, 1].
        heatmap: (H, W) map on the same pixels, in [0, 1].
        title: the title (the phrase).
        predicted: predicted boxes, best first (three are drawn).
        truth: ground-truth (x, y, w, h) boxes in the same pixels.
    """
    height, width = image.shape
    scale = 5.0 / max(height, width)
    fig, ax = plt.subplots(figsize=(max(width * scale, 2.5), max(height * scale, 2.5) + 0.4))
    draw_overlay(ax, image, heatmap, title, predicted, truth)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


def contact_sheet_png(panels: Sequence[dict], columns: int = 4) -> bytes:
    """``panels``: dicts with image, heatmap, title and optional predicted / truth boxes."""
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        draw_overlay(ax, panel["image"], panel["heatmap"], panel["title"], panel.get("predicted", ()),
                     panel.get("truth", ()))
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


DISPLAY_SIDE = 1024
"""Longest side drawn in a findings overlay (a few hundred pixels wide): larger radiographs are drawn at a stride."""


@dataclass(frozen=True)
class DrawnFinding:
    """One finding as a findings overlay draws it: its colour, legend line, boxes, and map and mask at the stride."""

    number: int
    colour: str
    legend: str
    boxes: tuple[GroundedBox, ...]
    heatmap: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class FindingsPicture:
    """Everything a findings overlay draws, at display size (arrays taken every ``step`` pixels, boxes in original
    pixels): small enough for a web page to keep per visitor and redraw with other layers."""

    image: np.ndarray
    height: int
    width: int
    step: int
    findings: tuple[DrawnFinding, ...]


def findings_picture(image: np.ndarray, findings: Sequence[GroundedFinding]) -> FindingsPicture:
    """What a findings overlay draws, taken at a stride so the longer side is at most ``DISPLAY_SIDE``: the web page
    keeps this per visitor instead of full-size maps."""
    height, width = image.shape
    step = max(1, -(-max(height, width) // DISPLAY_SIDE))
    drawn = tuple(DrawnFinding(f.number, f.colour, _legend_label(f), tuple(f.result.boxes),
                               f.result.heatmap[::step, ::step].copy(), f.result.mask[::step, ::step].copy())
                  for f in findings)
    return FindingsPicture(image[::step, ::step].copy(), height, width, step, drawn)


def draw_findings(ax, picture: FindingsPicture, heatmap: bool = True, mask: bool = True, boxes: bool = True) -> None:
    """Several findings on one image, each in its own colour: heatmap as a tint whose opacity follows the map, mask
    as an outline, boxes numbered; a legend below names them with their status.

    Args:
        ax (matplotlib.axes.Axes): the matplotlib axes to draw on.
        picture: what to draw (``findings_picture``).
        heatmap: draw each finding's heatmap tint.
        mask: draw each finding's mask outline.
        boxes: draw each finding's numbered boxes.
    """
    height, width, step = picture.height, picture.width, picture.step
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # drawn at a stride, placed in original pixels
    ax.imshow(picture.image, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=extent)
    for finding in picture.findings:
        colour = colors.to_rgb(finding.colour)
        if heatmap:
            tint = np.zeros((*finding.heatmap.shape, 4), dtype=np.float32)
            tint[..., :3] = colour
            tint[..., 3] = 0.55 * np.clip(np.nan_to_num(finding.heatmap, nan=0.0), 0, 1)
            ax.imshow(tint, interpolation="nearest", extent=extent)
        if mask and finding.mask.any():
            ax.contour(np.arange(0, width, step), np.arange(0, height, step), finding.mask.astype(np.float32),
                       levels=[0.5], colors=[colour], linewidths=1.2)
        if boxes:
            for box in finding.boxes:
                ax.add_patch(patches.Rectangle((box.x - 0.5, box.y - 0.5), box.w, box.h, fill=False, ec=colour,
                                               lw=1.5))
                ax.text(box.x - 0.5, box.y - 0.5, str(finding.number), color="white", fontsize=7, va="bottom",
                        bbox={"facecolor": colour, "edgecolor": "none", "pad": 1})
    ax.axis("off")
    handles = [patches.Patch(color=f.colour, label=f.legend) for f in picture.findings]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), fontsize=8, frameon=False)


def findings_figure(picture: FindingsPicture, heatmap: bool = True, mask: bool = True, boxes: bool = True):
    """A figure of ``draw_findings`` sized for the image plus a legend line per finding.

    The caller closes it (``png_bytes`` does), or pyplot keeps it.

    Args:
        picture: what to draw (``findings_picture``).
        heatmap: draw the heatmap tints.
        mask: draw the mask outlines.
        boxes: draw the numbered boxes.
    """
    height, width = picture.height, picture.width
    side = 5.0
    fig = plt.figure(figsize=(side * max(width / height, 0.6),
                              side * min(height / width, 1.6) + 0.25 * len(picture.findings)))
    draw_findings(fig.add_subplot(), picture, heatmap, mask, boxes)
    fig.tight_layout()
    return fig


def findings_png(image: np.ndarray, findings: Sequence[GroundedFinding]) -> bytes:
    """All findings on the image, every layer, as PNG bytes."""
    return png_bytes(findings_figure(findings_picture(image, findings)), dpi=110)


def render_findings(picture: FindingsPicture, heatmap: bool = True, mask: bool = True,
                    boxes: bool = True) -> np.ndarray:
    """The findings overlay as an RGB uint8 array (for the web page), with the chosen layers.

    Args:
        picture: what to draw (``findings_picture``).
        heatmap: draw the heatmap tints.
        mask: draw the mask outlines.
        boxes: draw the numbered boxes.
    """
    fig = findings_figure(picture, heatmap, mask, boxes)
    fig.set_dpi(110)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def _legend_label(finding: GroundedFinding) -> str:
    status = "" if finding.status in ("positive", "typed") else f" ({finding.status})"
    flat = " - flat map, not located" if finding.result.flat else ""
    return f"{finding.number}. {textwrap.shorten(finding.text, 70)}{status}{flat}"
