"""Reading radiographs and the one geometry that maps between original pixels and the model's square.

The forward path is the official preprocessing: shorter side resized to the model size (bilinear,
align_corners False, no antialiasing, long side = int(size * long / short)), then a centre crop whose
start is ``resized // 2 - size // 2``. The backward path projects a model-space map to original pixels,
either as the official code does (nearest resize to the short side, symmetric NaN pad) or exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from medground.errors import BoxError, ImageError

MIN_IMAGE_SIDE = 32
"""Smaller images carry no usable anatomy once resized to the model's input."""
MAX_PIXELS_ENV = "MEDGROUND_MAX_IMAGE_PIXELS"
"""Raise PIL's decompression-bomb limit (about 89 million pixels) for images you trust."""

ImageInput = str | Path | Image.Image | np.ndarray
Box = tuple[float, float, float, float]


def read_image(image: ImageInput) -> np.ndarray:
    """Return the image as float32 grayscale in [0, 1], shape (H, W), in its own orientation.

    Pixel scaling: 8-bit / 255; 16-bit / 65535, except data whose maximum is at most 4095, which is read as 12-bit
    (/ 4095: 12-bit radiographs are often stored in 16-bit PNGs and would otherwise come out 16 times too dark);
    32-bit integers only when their values fit 16 bits (then as 16-bit); floats only in [0, 1]; DICOM (MONOCHROME1 or
    2) through its modality LUT, then its VOI LUT or window, then min-max. Images without contrast, with several
    frames or with transparency are refused.
    """
    if isinstance(image, (str, Path)):
        pixels = _read_path(Path(image))
        name = str(image)
    elif isinstance(image, Image.Image):
        pixels = _pil_to_unit(image, "the PIL image")
        name = "the PIL image"
    elif isinstance(image, np.ndarray):
        pixels = _array_to_unit(image, "the array")
        name = "the array"
    else:
        raise ImageError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    height, width = pixels.shape
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageError(f"{name} is {width}x{height}; both sides must be at least {MIN_IMAGE_SIDE} pixels")
    if not pixels.max() > pixels.min():
        raise ImageError(f"{name} has no contrast: every pixel reads as {float(pixels.flat[0]):.4g}")
    return pixels


@contextlib.contextmanager
def _pil_limits(path: Path) -> Iterator[None]:
    """PIL's decompression-bomb warning and error both become an ImageError that says how to lift the limit."""
    limit = os.environ.get(MAX_PIXELS_ENV)
    saved = Image.MAX_IMAGE_PIXELS
    try:
        if limit:
            Image.MAX_IMAGE_PIXELS = int(limit)
    except ValueError:
        raise ImageError(f"{MAX_PIXELS_ENV}={limit!r} is not an integer") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: {exc}. If you trust this file, raise the limit: set {MAX_PIXELS_ENV} to a larger "
                         "pixel count") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_image_file(path: Path) -> None:
    """ImageError if ``path`` is missing or not a PNG/JPEG/DICOM; reads the header only, for readers that decode
    the file themselves (the BioViL baselines) and for validating datasets before any work."""
    image_size(path)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; ImageError if it is missing or not a readable image."""
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    if _is_dicom(path):
        import pydicom

        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            return int(header.Columns), int(header.Rows)
        except Exception as exc:  # pydicom raises many kinds for broken files
            raise ImageError(f"cannot read {path} as DICOM: {exc}") from exc
    try:
        with _pil_limits(path), Image.open(path) as opened:
            return opened.size
    except (UnidentifiedImageError, OSError) as exc:
        raise _unreadable(path, exc) from exc


def _read_path(path: Path) -> np.ndarray:
    check_image_file(path)
    if _is_dicom(path):
        return _read_dicom(path)
    try:
        with _pil_limits(path), Image.open(path) as opened:
            if getattr(opened, "n_frames", 1) > 1:
                raise ImageError(f"{path} holds {opened.n_frames} frames; a single 2-D image is expected")
            opened.load()
            return _pil_to_unit(opened, str(path))
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> ImageError:
    return ImageError(f"cannot read {path} as an image (PNG, JPEG or DICOM expected): {exc}")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError as exc:  # unreadable (permissions, I/O): an image error like any other, not a crash
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_dicom(path: Path) -> np.ndarray:
    """Stored values -> modality LUT (rescale slope/intercept) -> VOI LUT or window -> min-max to [0, 1]."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(path)
        photometric = getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ImageError(f"{path}: PhotometricInterpretation {photometric!r}; a grayscale radiograph "
                             "(MONOCHROME1 or MONOCHROME2) is expected")
        pixels = dataset.pixel_array
        if pixels.ndim != 2:
            raise ImageError(f"{path}: DICOM pixel data has shape {pixels.shape}; a single 2-D frame is expected")
        values = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset).astype(np.float64)
    except ImageError:
        raise
    except Exception as exc:  # pydicom raises many kinds for broken files
        raise ImageError(f"cannot read {path} as DICOM: {exc}") from exc
    if not np.isfinite(values).all():
        raise ImageError(f"{path}: DICOM pixel values are not finite after its LUTs")
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def _pil_to_unit(image: Image.Image, name: str) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = np.asarray(image.convert("RGBA"))[..., 3]
        if (alpha != 255).any():
            raise ImageError(f"{name} has a transparent alpha channel; flatten it onto a background first")
        image = image.convert("L")
    if image.mode.startswith("I"):
        return _array_to_unit(np.asarray(image), name)
    if image.mode == "F":
        return _array_to_unit(np.asarray(image, dtype=np.float32), name)
    if image.mode != "L":
        image = image.convert("L")
    return _array_to_unit(np.asarray(image), name)


FLOAT_SLACK = 1e-3
"""Float images may overshoot [0, 1] by this much (rounding in the caller's own scaling); it is clipped."""


def _array_to_unit(array: np.ndarray, name: str) -> np.ndarray:
    """8-bit /255, 16-bit /65535 (12-bit data /4095), floats in [0, 1] as they are."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ImageError(f"{name}: expected a 2-D grayscale array, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ImageError(f"{name}: integer pixel values span [{low}, {high}], outside 16 bits; convert it to "
                             "16-bit or to float in [0, 1] first")
        return array.astype(np.float32) / (4095.0 if high <= 4095 else 65535.0)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name} contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:  # clipping would silently flatten the image
            raise ImageError(f"{name}: float pixel values span [{low:.4g}, {high:.4g}], but floats must lie in "
                             "[0, 1]; divide 8-bit data by 255 (or pass it as uint8) and rescale other ranges first")
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    raise ImageError(f"{name}: unsupported pixel type {array.dtype}; use uint8, uint16 or float in [0, 1]")


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
            raise ValueError(f"heatmap is {heatmap.shape}, expected ({self.size}, {self.size})")
        if mode == "paper":
            return self._to_original_paper(heatmap)
        if mode == "exact":
            return self._to_original_exact(heatmap)
        raise ValueError(f"mode must be 'paper' or 'exact', got {mode!r}")

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
        return PreparedImage(self.geometry, self.model_input.pin_memory())


def prepare_image(image: ImageInput | PreparedImage, size: int) -> PreparedImage:
    """Read ``image`` (unless already prepared) and map it to a ``size`` x ``size`` model input."""
    if isinstance(image, PreparedImage):
        if image.geometry.size != size:
            raise ImageError(f"image was prepared for a {image.geometry.size}-pixel model, this one takes {size}")
        return image
    pixels = read_image(image)
    geometry = Geometry(width=pixels.shape[1], height=pixels.shape[0], size=size)
    return PreparedImage(geometry, geometry.to_model(pixels))


def box_pixel_slices(box: Box, height: int, width: int) -> tuple[slice, slice]:
    """Rows and columns covered by an (x, y, w, h) box: [y, y + h) rounded half up, clipped to the image.

    Integer boxes (MS-CXR) cover exactly ``[y:y+h, x:x+w]``, as in the official metrics.
    """
    x, y, w, h = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise BoxError(f"box {box} must have finite coordinates and positive width and height")
    x0, x1 = max(math.floor(x + 0.5), 0), min(math.floor(x + w + 0.5), width)
    y0, y1 = max(math.floor(y + 0.5), 0), min(math.floor(y + h + 0.5), height)
    if x0 >= x1 or y0 >= y1:
        raise BoxError(f"box {box} (x, y, w, h) lies outside the {width}x{height} image")
    return slice(y0, y1), slice(x0, x1)
