"""Shared fixtures: tiny random-weight models of the real layouts and real NIH radiographs (``tests/data``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import random_paper_layout
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA = Path(__file__).resolve().parent / "data"
NIH_MINI = DATA / "nih-mini"
SHARED_NIH = Path(os.environ.get("MEDGROUND_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "nih-cxr14-bbox"


@pytest.fixture(scope="session")
def nih_root() -> Path:
    """Nine real NIH radiographs (512 px) with their boxes, shipped in the repository."""
    return NIH_MINI


@pytest.fixture(scope="session")
def shared_nih_root() -> Path:
    """The larger shared NIH folder (40 images, 1024 px); only in this workplace, so tests using it are extras."""
    if not (SHARED_NIH / "images").is_dir():
        pytest.skip(f"optional shared NIH data not found at {SHARED_NIH} (set MEDGROUND_SHARED_DATA)")
    return SHARED_NIH


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Random weights, paper layout at 1/8 width, 128-pixel input (attention at 8x8 and 4x4)."""
    return random_paper_layout(tmp_path_factory.mktemp("tiny-model"), width_divisor=8, image_size=128)


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    """A portrait and a landscape crop of a real radiograph, odd sizes, saved as 8-bit PNG."""
    pixels = np.asarray(Image.open(NIH_MINI / "images" / "00000072_000.png").convert("L"))
    folder = tmp_path_factory.mktemp("odd-images")
    crops = {"portrait": pixels[101:454, 211:512], "landscape": pixels[200:489, 60:477]}
    paths = {}
    for name, crop in crops.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(paths[name])
    return paths


@pytest.fixture(scope="session")
def toy_model():
    """The toy phantom LDM shipped in the package, loaded once."""
    from medground import load_model

    return load_model("toy")
