"""VinDr-CXR (Nguyen et al., 2022), the paper's out-of-distribution test.

Annotations CSV (``annotations_test.csv`` or ``--csv``) with ``image_id, class_name, x_min, y_min, x_max,
y_max``; boxes are merged per (image, class) over all radiologists; only the MS-CXR finding classes are
kept; prompt = "The patient has {class in lower case}". Images are found under ``root`` as
``{image_id}`` + one of .dicom, .dcm, .png, .jpg (searched recursively once).
"""

from __future__ import annotations

import csv as csv_module
from pathlib import Path

from medground.datasets.base import DatasetError, Sample, sample_id

VINDR_TO_MS_CXR = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
                   "Edema": "Edema", "Lung Opacity": "Lung Opacity", "Pleural effusion": "Pleural Effusion",
                   "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax"}
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")


def _image_size(path: Path) -> tuple[int, int]:
    if path.suffix.lower() in (".dicom", ".dcm"):
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
        return int(header.Columns), int(header.Rows)
    from PIL import Image

    with Image.open(path) as opened:
        return opened.size


def read_vindr(root: Path, csv: Path | None = None) -> list[Sample]:
    csv = csv or root / "annotations_test.csv"
    if not Path(csv).is_file():
        raise DatasetError(f"VinDr-CXR annotations not found: {csv}; pass --csv")
    images = {p.stem: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    grouped: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    with open(csv, newline="") as handle:
        for row in csv_module.DictReader(handle):
            category = VINDR_TO_MS_CXR.get(row["class_name"])
            if category is None or not row.get("x_min"):
                continue
            x0, y0, x1, y1 = (float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            grouped.setdefault((row["image_id"], category), []).append((x0, y0, x1 - x0, y1 - y0))
    samples = []
    for (image_id, category), boxes in grouped.items():
        if image_id not in images:
            raise DatasetError(f"VinDr-CXR image {image_id} not found under {root}")
        width, height = _image_size(images[image_id])
        phrase = f"The patient has {category.lower()}"
        samples.append(Sample(id=sample_id(image_id, phrase), image_path=images[image_id], width=width,
                              height=height, phrase=phrase, category=category, boxes=tuple(boxes)))
    return samples
