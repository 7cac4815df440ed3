"""The common sample record, the crop filter of the paper's protocol, and the dataset registry."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medground.errors import MedgroundError
from medground.images import Box, Geometry

PROTOCOL_CROP = 512
"""The LDM's input side: boxes that do not survive its centre crop are dropped (official protocol)."""


@dataclass(frozen=True)
class Sample:
    """One image-phrase pair with its boxes in original pixels."""

    id: str
    image_path: Path
    width: int
    height: int
    phrase: str
    category: str
    boxes: tuple[Box, ...]


@dataclass
class DatasetLoad:
    """Samples that survive the crop filter, and what the filter removed."""

    name: str
    samples: list[Sample]
    skipped_samples: list[str] = field(default_factory=list)
    """Ids of samples none of whose boxes survive the crop (counted, never evaluated)."""
    dropped_boxes: int = 0


class DatasetError(MedgroundError, ValueError):
    """A dataset file that is missing or not in the expected layout."""


def sample_id(image_path: str, phrase: str) -> str:
    """Deterministic, file-name-safe id: image stem + a short hash of (path, phrase)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(image_path).stem)[:40]
    return f"{stem}-{hashlib.sha1(f'{image_path}|{phrase}'.encode()).hexdigest()[:8]}"


def apply_crop_filter(name: str, candidates: Iterable[Sample], crop: int = PROTOCOL_CROP) -> DatasetLoad:
    """Drop boxes outside the model's centre crop; skip samples left with none (the official protocol)."""
    load = DatasetLoad(name=name, samples=[])
    for sample in candidates:
        geometry = Geometry(sample.width, sample.height, crop)
        kept = tuple(box for box in sample.boxes if geometry.box_in_crop(box))
        load.dropped_boxes += len(sample.boxes) - len(kept)
        if kept:
            load.samples.append(Sample(**{**sample.__dict__, "boxes": kept}))
        else:
            load.skipped_samples.append(sample.id)
    return load


def _readers() -> dict[str, Callable[..., list[Sample]]]:
    from medground.datasets import ms_cxr, nih, vindr

    return {"ms-cxr": ms_cxr.read_ms_cxr, "csv": ms_cxr.read_ms_cxr, "nih": nih.read_nih, "vindr": vindr.read_vindr}


DATASETS = ("ms-cxr", "nih", "vindr", "csv")


def load_dataset(name: str, root: Path, csv: Path | None = None, crop: int = PROTOCOL_CROP) -> DatasetLoad:
    """Read a dataset by name (``ms-cxr``, ``nih``, ``vindr``, ``csv``) and apply the crop filter."""
    readers = _readers()
    if name not in readers:
        raise DatasetError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    return apply_crop_filter(name, readers[name](root, csv), crop)
