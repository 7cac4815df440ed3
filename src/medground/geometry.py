"""The one geometry that maps between original pixels and the model's square input, and images prepared for it.

The forward path is the official preprocessing: shorter side resized to the model size (bilinear,
align_corners False, no antialiasing, long side = int(size * long / short)), then a centre crop whose
start is ``resized // 2 - size // 2``. The backward path projects a model-space map to original pixels,
either as the official code does (nearest resize to the short side, symmetric NaN pad) or exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from medground.errors import BoxError, ConfigError, ImageError
from medground.images import ImageInput, read_image
from medground.results import Box


@dataclass(frozen=True)
class Geometry:
    """Maps between an original W x H image and the model's ``size`` x ``size`` input."""

    width: int
    height: int
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        """(height, width) after resizing the shorter side to ``size`` (torchvision's rule)."""
        short, long = sorted((self.width, self.height))
        long_resized = int(self.size * long / short)
        if self.width <= self.height:
            return long_resized, self.size
        return self.size, long_resized

    @property
    def crop_offset(self) -> tuple[int, int]:
        """(top, left) of the centre crop in resized pixels (MONAI CenterSpatialCrop)."""
        rh, rw = self.resized
        return rh // 2 - self.size // 2, rw // 2 - self.size // 2

    def to_model(self, pixels: np.ndarray) -> torch.Tensor:
        """Original (H, W) image in [0, 1] -> model input tensor of shape (1, 1, size, size)."""
        if pixels.shape != (self.height, self.width):
            raise ImageError(f"image is {pixels.shape[::-1]} but this geometry is for {self.width}x{self.height}")
        tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
        resized = F.interpolate(tensor, size=self.resized, mode="bilinear", align_corners=False, antialias=False)
        top, left = self.crop_offset
        return resized[..., top : top + self.size, left : left + self.size].contiguous()

    def box_to_model(self, box: Box) -> Box:
        """An (x, y, w, h) box in original pixels -> the same box in model pixels (may leave the crop)."""
        rh, rw = self.resized
        sx, sy = rw / self.width, rh / self.height
        top, left = self.crop_offset
        x, y, w, h = box
        return (x * sx - left, y * sy - top, w * sx, h * sy)

    def box_in_crop(self, box: Box) -> bool:
        """Whether any part of an original-pixel box survives the centre crop."""
        x, y, w, h = self.box_to_model(box)
        return x < self.size and y < self.size and x + w > 0 and y + h > 0

    def to_original(self, heatmap: np.ndarray, mode: Literal["paper", "exact"] = "paper") -> np.ndarray:
        """A (size, size) map -> (H, W) float32 map, NaN where the crop discarded the image."""
        if heatmap.shape != (self.size, self.size):
            raise ImageError(f"heatmap is {heatmap.shape}, expected ({self.size}, {self.size})")
        if mode == "paper":
            return self._to_original_paper(heatmap)
        if mode == "exact":
            return self._to_original_exact(heatmap)
        raise ConfigError(f"back projection must be 'paper' or 'exact', got {mode!r}")

    def _to_original_paper(self, heatmap: np.ndarray) -> np.ndarray:
        side = min(self.width, self.height)
        tensor = torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))[None, None]
        square = F.interpolate(tensor, size=(side, side), mode="nearest")
        margin_w, margin_h = self.width - side, self.height - side
        pads = (margin_w // 2, math.ceil(margin_w / 2), margin_h // 2, math.ceil(margin_h / 2))
        return F.pad(square, pads, value=float("nan"))[0, 0].numpy()

    def _to_original_exact(self, heatmap: np.ndarray) -> np.ndarray:
        rh, rw = self.resized
        top, left = self.crop_offset
        rows = np.floor((np.arange(self.height) + 0.5) * rh / self.height).astype(np.int64) - top
        cols = np.floor((np.arange(self.width) + 0.5) * rw / self.width).astype(np.int64) - left
        out = np.full((self.height, self.width), np.nan, dtype=np.float32)
        row_ok = (rows >= 0) & (rows < self.size)
        col_ok = (cols >= 0) & (cols < self.size)
        out[np.ix_(row_ok, col_ok)] = heatmap[np.ix_(rows[row_ok], cols[col_ok])]
        return out


@dataclass(frozen=True)
class PreparedImage:
    """An image read and mapped to the model's input: all the Grounder needs of it. Preparing is the CPU part of a
    query (decoding PNG/DICOM, resizing), so batch runs do it ahead on loader workers while the device computes."""

    geometry: Geometry
    model_input: torch.Tensor
    """(1, 1, size, size) float32 in [0, 1]."""

    def pin_memory(self) -> PreparedImage:
        """A copy whose model input is page-locked, for a faster asynchronous copy to the GPU."""
        return PreparedImage(self.geometry, self.model_input.pin_memory())


def prepare_image(image: ImageInput | PreparedImage, size: int) -> PreparedImage:
    """Read ``image`` (unless already prepared) and map it to a ``size`` x ``size`` model input."""
    if isinstance(image, PreparedImage):
        if image.geometry.size != size:
            raise ImageError(f"image was prepared for a {image.geometry.size}-pixel model, this one takes {size}")
        return image
    return prepare_pixels(read_image(image), size)


def prepare_pixels(pixels: np.ndarray, size: int) -> PreparedImage:
    """Pixels already read by ``read_image`` mapped to the model's input (no second read)."""
    geometry = Geometry(width=pixels.shape[1], height=pixels.shape[0], size=size)
    return PreparedImage(geometry, geometry.to_model(pixels))


def box_pixel_slices(box: Box, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns covered by an (x, y, w, h) box: [y, y + h) rounded half up, clipped to the image.

    Integer boxes (MS-CXR) cover exactly ``[y:y+h, x:x+w]``, as in the official metrics.

    Args:
        box: (x, y, w, h) in pixels of the image.
        height: the image's height in pixels.
        width: the image's width in pixels.

    Raises:
        BoxError: a box with a non-finite value or no positive width and height, or with no pixel in the image.
    """
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise BoxError(f"box {box} must have finite coordinates and positive width and height")
    x0, x1 = max(math.floor(x + 0.5), 0), min(math.floor(x + w + 0.5), width)
    y0, y1 = max(math.floor(y + 0.5), 0), min(math.floor(y + h + 0.5), height)
    if x0 >= x1 or y0 >= y1:
        raise BoxError(f"box {box} (x, y, w, h) lies outside the {width}x{height} image")
    return slice(y0, y1), slice(x0, x1)
