"""MS-CXR (Boecking et al., ECCV 2022) and any CSV in its column layout.

CSV ``MS_CXR_Local_Alignment_v1.x.csv``: one row per box with ``dicom_id, category_name, label_text, path,
x, y, w, h, image_width, image_height`` (+ ``split`` in 1.1.0). Rows with the same (path, label_text) are
one sample with several boxes, in file order; the phrase is ``label_text``; ``path`` is relative to the
MIMIC-CXR-JPG root given as ``--root``. The declared image size must match the image file.
"""

from __future__ import annotations

from pathlib import Path

from medground.datasets.base import SampleRows, assemble, checked_size, csv_rows, image_under, parse_box, parse_number
from medground.errors import DatasetError

REQUIRED_COLUMNS = ("category_name", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height")
DEFAULT_CSV_NAMES = ("MS_CXR_Local_Alignment_v1.1.0.csv", "MS_CXR_Local_Alignment_v1.0.0.csv",
                     "MS_CXR_Local_Alignment_v0.1.csv")


def read_ms_cxr(root: Path, csv: Path | None = None):
    """MS-CXR samples, every row checked (see above) before any is used; the crop filter comes after.

    Args:
        root: the MIMIC-CXR-JPG root the CSV's ``path`` column is relative to.
        csv: the annotation file; None: the first of ``DEFAULT_CSV_NAMES`` found in ``root``.

    Raises:
        DatasetError: no CSV, or a row that cannot be used (named by file and row).
    """
    csv = csv or next((root / name for name in DEFAULT_CSV_NAMES if (root / name).is_file()), None)
    if csv is None or not Path(csv).is_file():
        raise DatasetError(f"MS-CXR CSV not found (given {csv}, looked for {DEFAULT_CSV_NAMES} in {root}); pass --csv")
    groups: dict[tuple[str, str], SampleRows] = {}
    declared: dict[str, tuple[int, int]] = {}
    with csv_rows(csv, required=REQUIRED_COLUMNS) as reader:
        for number, row in enumerate(reader, start=2):
            where = f"{csv} row {number}"
            if None in row or any(row[c] is None for c in REQUIRED_COLUMNS):
                raise DatasetError(f"{where}: has {len(row)} fields, not the header's {len(reader.fieldnames)}")
            phrase, category = row["label_text"].strip(), row["category_name"].strip()
            if not phrase or not category:
                raise DatasetError(f"{where}: empty label_text or category_name")
            path = image_under(root, row["path"], where)
            size = tuple(int(parse_number(row[c], c, where)) for c in ("image_width", "image_height"))
            if declared.setdefault(row["path"], size) != size:
                raise DatasetError(f"{where}: image size {size} differs from an earlier row's "
                                   f"{declared[row['path']]} for {row['path']}")
            group = groups.setdefault((row["path"], phrase), SampleRows(path, row["path"], phrase, category))
            group.add(parse_box(row["x"], row["y"], row["w"], row["h"], where), where, category)
    return assemble("ms-cxr", groups.values(),
                    lambda g: checked_size(g.image, g.rows[0], declared[g.image_key]))
