"""MS-CXR (Boecking et al., ECCV 2022) and any CSV in its column layout.

CSV ``MS_CXR_Local_Alignment_v1.x.csv``: one row per box with ``dicom_id, category_name, label_text, path,
x, y, w, h, image_width, image_height`` (+ ``split`` in 1.1.0). Rows with the same (path, label_text) are
one sample with several boxes, in file order; the phrase is ``label_text``; ``path`` is relative to the
MIMIC-CXR-JPG root given as ``--root``.
"""

from __future__ import annotations

import csv as csv_module
from pathlib import Path

from medground.datasets.base import DatasetError, Sample, sample_id

REQUIRED_COLUMNS = ("category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
DEFAULT_CSV_NAMES = ("MS_CXR_Local_Alignment_v1.1.0.csv", "MS_CXR_Local_Alignment_v1.0.0.csv",
                     "MS_CXR_Local_Alignment_v0.1.csv")


def read_ms_cxr(root: Path, csv: Path | None = None) -> list[Sample]:
    csv = csv or next((root / name for name in DEFAULT_CSV_NAMES if (root / name).is_file()), None)
    if csv is None or not Path(csv).is_file():
        raise DatasetError(f"MS-CXR CSV not found (given {csv}, looked for {DEFAULT_CSV_NAMES} in {root}); pass --csv")
    with open(csv, newline="") as handle:
        reader = csv_module.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{csv} lacks columns {missing}; found {reader.fieldnames}")
        grouped: dict[tuple[str, str], list[dict]] = {}
        for row in reader:
            grouped.setdefault((row["path"], row["label_text"]), []).append(row)
    samples = []
    for (path, phrase), rows in grouped.items():
        first = rows[0]
        boxes = tuple((float(r["x"]), float(r["y"]), float(r["w"]), float(r["h"])) for r in rows)
        samples.append(Sample(id=sample_id(path, phrase), image_path=root / path,
                              width=int(float(first["image_width"])), height=int(float(first["image_height"])),
                              phrase=phrase,
                              category=first["category_name"], boxes=boxes))
    return samples
