"""The common sample record, row validation and the crop filter of the paper's protocol (the registry is
``medground.datasets.DATASETS``).

Every reader returns ``Sample`` records after checking every row (numbers, boxes, paths inside the root, image
files and their sizes, duplicates, colliding ids) before anything is evaluated; a row that cannot be used is a
``DatasetError`` naming the file and row, and a row that is only redundant (an exact duplicate) is dropped and
reported in ``DatasetLoad.notes``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medground.errors import DatasetError, ImageError
from medground.geometry import Geometry
from medground.images import image_size
from medground.results import Box

PROTOCOL_CROP = 512
"""The LDM's input side: boxes that do not survive its centre crop are dropped (official protocol)."""


@dataclass(frozen=True)
class Sample:
    """One image-phrase pair with its boxes in original pixels."""

    id: str
    image: Any = field(compare=False, repr=False)
    """What the grounding methods read: a path, or the pixels themselves (phantoms)."""
    image_key: str
    """Names the image: samples with the same key share one image (and one inversion)."""
    width: int
    height: int
    phrase: str
    category: str
    boxes: tuple[Box, ...]


@dataclass
class DatasetLoad:
    """Samples that survive the crop filter, and what the filter and the validation removed."""

    name: str
    samples: list[Sample]
    skipped_samples: list[str] = field(default_factory=list)
    """Ids of samples none of whose boxes survive the crop (counted, never evaluated)."""
    dropped_boxes: int = 0
    notes: list[str] = field(default_factory=list)
    """Rows dropped as exact duplicates, with their file and row numbers."""
    source: dict[str, Any] = field(default_factory=dict)
    """How it was loaded (dataset name, root and CSV, or phantom seeds): what a run records to be repeated."""

    def first(self, limit: int | None) -> DatasetLoad:
        """The first ``limit`` samples (all for None); a dataset left with none is a DatasetError."""
        if limit is not None:
            self.samples = self.samples[:limit]
        if not self.samples:
            raise DatasetError(f"{self.name}: no sample to evaluate ({len(self.skipped_samples)} skipped: no box "
                               "inside the crop)")
        return self

    def describe(self) -> str:
        """One line on what was loaded and what the crop filter removed, for the command's output."""
        return (f"{self.name}: {len(self.samples)} samples; skipped {len(self.skipped_samples)} with no box inside "
                f"the crop; dropped {self.dropped_boxes} boxes outside it")


def sample_id(image_key: str, phrase: str) -> str:
    """Deterministic, file-name-safe id: image stem + a short hash of (image, phrase)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(image_key).stem)[:40]
    return f"{stem}-{hashlib.sha1(f'{image_key}|{phrase}'.encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def csv_rows(path: Path, dict_rows: bool = True, required: Sequence[str] = ()) -> Iterator[Iterator[Any]]:
    """The rows of a UTF-8 CSV (as dicts with the ``required`` columns, or lists); an undecodable or malformed file,
    or missing columns, is a DatasetError.

    Args:
        path: the CSV file.
        dict_rows: rows as dicts keyed by the header (else as lists, for files whose header is malformed: NIH).
        required: columns the header must have (dict rows only).
    """
    from medground.text_input import open_text

    try:
        with open_text(path, "dataset", DatasetError) as handle:
            if not dict_rows:
                yield csv.reader(handle)
                return
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path} lacks columns {missing}; found {reader.fieldnames}")
            yield reader
    except csv.Error as exc:
        raise DatasetError(f"{path} is not a readable CSV: {exc}") from None


def parse_number(value: Any, column: str, where: str) -> float:
    """A dataset cell as a finite float, so a malformed row fails before anything is evaluated.

    Args:
        value: the cell.
        column: its column, for the message.
        where: the file and row, for the message.

    Raises:
        DatasetError: a value that is not a finite number.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {column}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise DatasetError(f"{where}: {column}={value!r} is not a finite number")
    return number


def parse_box(x: Any, y: Any, w: Any, h: Any, where: str) -> Box:
    """An (x, y, w, h) box from four dataset cells, in pixels of the original image.

    Args:
        x: the left edge.
        y: the top edge.
        w: the width.
        h: the height.
        where: the file and row, for messages.

    Raises:
        DatasetError: a value that is not a finite number, or a width or height that is not positive.
    """
    box = tuple(parse_number(v, c, where) for v, c in ((x, "x"), (y, "y"), (w, "w"), (h, "h")))
    if box[2] <= 0 or box[3] <= 0:
        raise DatasetError(f"{where}: box {box} must have positive width and height")
    return box  # type: ignore[return-value]


def image_under(root: Path, relative: str, where: str) -> Path:
    """``root / relative`` for a path from a dataset file; absolute paths and paths leaving ``root`` are refused.

    Args:
        root: the dataset root (``--root``).
        relative: the path as the dataset file writes it.
        where: the file and row, for messages.

    Raises:
        DatasetError: an empty or absolute path, or one that resolves outside ``root``.
    """
    if not relative or Path(relative).is_absolute():
        raise DatasetError(f"{where}: image path {relative!r} must be relative to the dataset root {root}")
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DatasetError(f"{where}: image path {relative!r} leaves the dataset root {root}")
    return root / relative


def checked_size(path: Path, where: str, declared: tuple[int, int] | None = None) -> tuple[int, int]:
    """The image's (width, height) from its header; a missing or unreadable file, or a size that disagrees with
    what the dataset file declares, is an error naming the row.

    Args:
        path: the image file; only its header is read.
        where: the file and row, for messages.
        declared: the (width, height) the dataset file gives; None: nothing to compare.

    Raises:
        DatasetError: as above.
    """
    try:
        size = image_size(path)
    except ImageError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    if declared is not None and tuple(declared) != tuple(size):
        raise DatasetError(f"{where}: the dataset says {declared[0]}x{declared[1]} but {path} is {size[0]}x{size[1]}; "
                           "its boxes would be in the wrong pixels")
    return size


@dataclass
class SampleRows:
    """Boxes of one (image, phrase) gathered from the rows of a dataset file, before validation of the set."""

    image: Any
    image_key: str
    phrase: str
    category: str
    boxes: list[Box] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)

    def add(self, box: Box, where: str, category: str) -> None:
        """One more box of this sample; a row of another class for the same (image, phrase) is an error, since
        its box would be scored as this class's.

        Args:
            box: (x, y, w, h) in pixels of the original image.
            where: the file and row it came from.
            category: the row's class.
        """
        if category != self.category:
            raise DatasetError(f"{where} ({category!r}) and {self.rows[0]} ({self.category!r}) give the same phrase "
                               f"{self.phrase!r} on one image {self.image_key} under different classes; fix the "
                               "class of one of them.")
        self.boxes.append(box)
        self.rows.append(where)


def assemble(name: str, groups: Iterable[SampleRows], sizes: Callable[[SampleRows], tuple[int, int]]) -> DatasetLoad:
    """Samples from grouped rows: exact duplicate rows are dropped and noted; two groups whose ids collide (two
    labels that read as the same phrase on one image) are an error naming both.

    Args:
        name: the dataset's name.
        groups: each sample's rows (``SampleRows``), in file order.
        sizes: gives a group's image (width, height), checked against the image file where there is one.

    Raises:
        DatasetError: colliding sample ids, or a size the ``sizes`` function refuses.
    """
    load = DatasetLoad(name=name, samples=[])
    seen: dict[str, SampleRows] = {}
    for group in groups:
        identifier = sample_id(group.image_key, group.phrase)
        if identifier in seen:
            other = seen[identifier]
            raise DatasetError(f"{group.rows[0]} ({group.category!r}) and {other.rows[0]} ({other.category!r}) give "
                               f"the same phrase {group.phrase!r} on one image {group.image_key}: they would be "
                               "scored as one sample. Merge the labels or give them different phrases.")
        seen[identifier] = group
        unique: list[Box] = []
        for box, row in zip(group.boxes, group.rows):
            if box in unique:
                load.notes.append(f"{row}: exact duplicate of an earlier box of {group.image_key} "
                                  f"{group.phrase!r}, dropped")
            else:
                unique.append(box)
        width, height = sizes(group)
        load.samples.append(Sample(id=identifier, image=group.image, image_key=group.image_key, width=width,
                                   height=height, phrase=group.phrase, category=group.category, boxes=tuple(unique)))
    return load


def apply_crop_filter(load: DatasetLoad, crop: int = PROTOCOL_CROP) -> DatasetLoad:
    """Drop boxes outside the model's centre crop; skip samples left with none (the official protocol)."""
    kept_samples = []
    for sample in load.samples:
        geometry = Geometry(sample.width, sample.height, crop)
        kept = tuple(box for box in sample.boxes if geometry.box_in_crop(box))
        load.dropped_boxes += len(sample.boxes) - len(kept)
        if kept:
            kept_samples.append(replace(sample, boxes=kept))
        else:
            load.skipped_samples.append(sample.id)
    load.samples = kept_samples
    return load
