"""Reading radiographs (PNG, JPEG, TIFF, DICOM, PIL images, arrays) as float32 grayscale in [0, 1].

Every way in is bounded the same way: PIL's decompression-bomb limit (about 89 million pixels) applies to DICOM too,
checked from the header before any pixel is decoded, and ``MEDGROUND_MAX_IMAGE_PIXELS`` raises it for both. EXIF
orientation is applied, so a photo of a film taken on its side reads upright, as every viewer shows it.
"""

from __future__ import annotations

import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medground.errors import ImageError
from medground.text_input import file_mode

MIN_IMAGE_SIDE = 32
"""Smaller images carry no usable anatomy once resized to the model's input."""
MAX_PIXELS_ENV = "MEDGROUND_MAX_IMAGE_PIXELS"
"""Raise the pixel limit (PIL's decompression-bomb limit, about 89 million pixels) for images you trust."""
EXIF_ORIENTATION = 0x0112
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that swap width and height."""

ImageInput = str | Path | Image.Image | np.ndarray
T = TypeVar("T")


def read_image(image: ImageInput) -> np.ndarray:
    """Return the image as float32 grayscale in [0, 1], shape (H, W), in its own orientation.

    Pixel scaling: 8-bit / 255; 16-bit / 65535, except data whose maximum is at most 4095, which is read as 12-bit
    (/ 4095: 12-bit radiographs are often stored in 16-bit PNGs and would otherwise come out 16 times too dark);
    32-bit integers only when their values fit 16 bits (then as 16-bit); floats only in [0, 1]; DICOM (MONOCHROME1 or
    2) through its modality LUT, then its VOI LUT or window, then min-max. Images without contrast, with several
    frames or with transparency are refused. EXIF orientation is applied to files and PIL images.
    """
    if isinstance(image, (str, Path)):
        pixels = _read_path(Path(image))
        name = str(image)
    elif isinstance(image, Image.Image):
        name = "the PIL image"
        try:
            pixels = _pil_to_unit(ImageOps.exif_transpose(image), name)
        except (ValueError, OSError) as exc:  # a closed image, or one whose lazy data cannot be read any more
            raise ImageError(f"cannot read {name}: {exc}") from None
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


def max_image_pixels() -> int:
    """The pixel limit: ``MEDGROUND_MAX_IMAGE_PIXELS`` if set, else PIL's own."""
    from medground.text_input import env_limit

    return env_limit(MAX_PIXELS_ENV, Image.MAX_IMAGE_PIXELS or 2**62, ImageError)


def _too_large(path: Path, pixels: int, limit: int) -> ImageError:
    return ImageError(f"{path}: {pixels:,} pixels is over the limit of {limit:,} (a decompression bomb, or an image "
                      f"far larger than a radiograph). If you trust this file, raise the limit: set {MAX_PIXELS_ENV} "
                      "to a larger pixel count")


def _with_pil(path: Path, read: Callable[[Image.Image], T]) -> T:
    """``read`` applied to ``path`` opened by PIL under the pixel limit; a decompression bomb is an ImageError that
    says how to lift the limit, an unreadable file one that says what was expected."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                return read(opened)
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: {exc}. If you trust this file, raise the limit: set {MAX_PIXELS_ENV} to a larger "
                         "pixel count") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def check_image_file(path: Path) -> None:
    """ImageError if ``path`` is missing or not a PNG/JPEG/DICOM; reads the header only, for readers that decode
    the file themselves (the BioViL baselines) and for validating datasets before any work."""
    image_size(path)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as ``read_image`` will return it (EXIF orientation applied), from the file's header;
    ImageError if it is missing, not a regular file, over the pixel limit or not a readable image."""
    _check_regular_file(path)
    if _is_dicom(path):
        header = _dicom_header(path)
        return int(header.Columns), int(header.Rows)
    return _with_pil(path, _oriented_size)


def _oriented_size(opened: Image.Image) -> tuple[int, int]:
    width, height = opened.size
    return (height, width) if opened.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS else (width, height)


def _check_regular_file(path: Path) -> None:
    """Missing, a folder, a device or a pipe: each said as it is (a pipe cannot be read twice, header then pixels)."""
    mode = file_mode(path, "image", ImageError)
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a device, pipe or socket"
        raise ImageError(f"{path} is {kind}, not an image file; save the image to a file first")


def _dicom_header(path: Path):
    """The DICOM header (no pixel data), refused when its pixel count is over the limit."""
    import pydicom

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        pixels = int(header.Rows) * int(header.Columns) * int(getattr(header, "NumberOfFrames", 1) or 1)
    except Exception as exc:  # pydicom raises many kinds for broken files
        raise ImageError(f"cannot read {path} as DICOM: {exc}") from exc
    limit = max_image_pixels()
    if pixels > limit:
        raise _too_large(path, pixels, limit)
    return header


def _read_path(path: Path) -> np.ndarray:
    """One opening of the file: DICOM through pydicom, everything else through PIL."""
    _check_regular_file(path)
    if _is_dicom(path):
        return _read_dicom(path)
    return _with_pil(path, _decoded)


def _decoded(opened: Image.Image) -> np.ndarray:
    name = str(opened.filename)
    if getattr(opened, "n_frames", 1) > 1:
        raise ImageError(f"{name} holds {opened.n_frames} frames; a single 2-D image is expected")
    opened.load()
    return _pil_to_unit(ImageOps.exif_transpose(opened), name)


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

    _dicom_header(path)  # the pixel limit, before any pixel is decoded
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
    if array.size == 0:
        raise ImageError(f"{name} is empty (shape {array.shape})")
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
