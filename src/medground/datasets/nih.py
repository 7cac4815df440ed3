"""NIH ChestX-ray14 bounding boxes (Wang et al., CVPR 2017).

``BBox_List_2017.csv`` has a malformed header (``Image Index,Finding Label,Bbox [x,y,w,h],,,``): six
columns with x, y, w, h spread over the last four. One sample per (image, Finding Label) with its boxes
merged; category = the Finding Label as written; phrase = ``NIH_PHRASES[label]`` (the label in report
words, e.g. ``Effusion`` -> "pleural effusion"; other labels lower-cased). Images are ``root/images/``.
"""

from __future__ import annotations

import csv as csv_module
from pathlib import Path

from PIL import Image

from medground.datasets.base import DatasetError, Sample, sample_id

NIH_PHRASES = {"Effusion": "pleural effusion", "Infiltrate": "infiltrate", "Infiltration": "infiltration",
               "Mass": "lung mass", "Nodule": "lung nodule"}
DEFAULT_CSV_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.subset.csv")


def nih_phrase(label: str) -> str:
    return NIH_PHRASES.get(label, label.lower())


def read_nih(root: Path, csv: Path | None = None) -> list[Sample]:
    csv = csv or next((root / name for name in DEFAULT_CSV_NAMES if (root / name).is_file()), None)
    if csv is None or not Path(csv).is_file():
        raise DatasetError(f"NIH bounding-box CSV not found (given {csv}, looked for {DEFAULT_CSV_NAMES} in {root})")
    grouped: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    with open(csv, newline="") as handle:
        rows = csv_module.reader(handle)
        header = next(rows)
        if len(header) < 6 or not header[0].startswith("Image Index"):
            raise DatasetError(f"{csv}: expected the BBox_List_2017 header, found {header}")
        for row in rows:
            if not row:
                continue
            image, label, x, y, w, h = row[:6]
            grouped.setdefault((image, label), []).append((float(x), float(y), float(w), float(h)))
    samples = []
    for (image, label), boxes in grouped.items():
        path = root / "images" / image
        if not path.is_file():
            raise DatasetError(f"image listed in {csv} not found: {path}")
        with Image.open(path) as opened:
            width, height = opened.size
        phrase = nih_phrase(label)
        samples.append(Sample(id=sample_id(f"images/{image}", phrase), image_path=path, width=width, height=height,
                              phrase=phrase, category=label, boxes=tuple(boxes)))
    return samples
