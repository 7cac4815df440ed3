"""Shared fixtures: a tiny random-weight model of the paper's layout and real NIH radiographs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medground.models.random_init import random_paper_layout

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(os.environ.get("MEDGROUND_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
NIH_ROOT = SHARED_DATA / "nih-cxr14-bbox"


@pytest.fixture(scope="session")
def nih_root() -> Path:
    if not (NIH_ROOT / "images").is_dir():
        pytest.fail(f"NIH test data not found at {NIH_ROOT}; set MEDGROUND_SHARED_DATA to the shared/data folder")
    return NIH_ROOT


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Random weights, paper layout at 1/8 width, 128-pixel input (attention at 8x8 and 4x4)."""
    return random_paper_layout(tmp_path_factory.mktemp("tiny-model"), width_divisor=8, image_size=128)


@pytest.fixture(scope="session")
def odd_images(nih_root, tmp_path_factory) -> dict[str, Path]:
    """A portrait and a landscape crop of a real radiograph, odd sizes, saved as 8-bit PNG."""
    pixels = np.asarray(Image.open(nih_root / "images" / "00000072_000.png").convert("L"))
    folder = tmp_path_factory.mktemp("odd-images")
    crops = {"portrait": pixels[101:454, 211:512], "landscape": pixels[300:589, 120:537]}
    paths = {}
    for name, crop in crops.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(paths[name])
    return paths
