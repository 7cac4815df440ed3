"""NIH ChestX-ray14 bounding boxes (Wang et al., CVPR 2017).

``BBox_List_2017.csv`` has a malformed header (``Image Index,Finding Label,Bbox [x,y,w,h],,,``): six
columns with x, y, w, h spread over the last four. One sample per (image, Finding Label) with its boxes
merged; category = the Finding Label as written; phrase = ``NIH_PHRASES[label]`` (the label in report
words, e.g. ``Effusion`` -> "pleural effusion"; other labels lower-cased). Images are ``root/images/``.
"""

from __future__ import annotations

from pathlib import Path

from medground.datasets.base import SampleRows, assemble, checked_size, csv_rows, image_under, parse_box
from medground.errors import DatasetError

NIH_PHRASES = {"Effusion": "pleural effusion", "Infiltrate": "infiltrate", "Infiltration": "infiltration",
               "Mass": "lung mass", "Nodule": "lung nodule"}
DEFAULT_CSV_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.subset.csv")


def nih_phrase(label: str) -> str:
    """The phrase grounded for a Finding Label: report words (``NIH_PHRASES``), else the label in lower case."""
    return NIH_PHRASES.get(label, label.lower())


def read_nih(root: Path, csv: Path | None = None):
    """NIH ChestX-ray14 samples, every row checked before any is used; the crop filter comes after.

    Args:
        root: the dataset root, with the images in ``root/images/``.
        csv: the bounding-box file; None: the first of ``DEFAULT_CSV_NAMES`` found in ``root``.

    Raises:
        DatasetError: no CSV, an unexpected header, or a row that cannot be used (named by file and row).
    """
    csv = csv or next((root / name for name in DEFAULT_CSV_NAMES if (root / name).is_file()), None)
    if csv is None or not Path(csv).is_file():
        raise DatasetError(f"NIH bounding-box CSV not found (given {csv}, looked for {DEFAULT_CSV_NAMES} in {root})")
    groups: dict[tuple[str, str], SampleRows] = {}
    with csv_rows(csv, dict_rows=False) as rows:
        header = next(rows, [])
        if len(header) < 6 or not header[0].startswith("Image Index"):
            raise DatasetError(f"{csv}: expected the BBox_List_2017 header, found {header}")
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            where = f"{csv} row {number}"
            if len(row) < 6:
                raise DatasetError(f"{where}: expected image, label, x, y, w, h; found {row}")
            image, label = row[0].strip(), row[1].strip()
            if not image or not label:
                raise DatasetError(f"{where}: empty image name or label")
            key = f"images/{image}"
            path = image_under(root, key, where)
            group = groups.setdefault((image, label), SampleRows(path, key, nih_phrase(label), label))
            group.boxes.append(parse_box(*row[2:6], where))
            group.rows.append(where)
    return assemble("nih", groups.values(), lambda g: checked_size(g.image, g.rows[0]))
