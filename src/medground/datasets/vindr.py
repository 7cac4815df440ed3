"""VinDr-CXR (Nguyen et al., 2022), the paper's out-of-distribution test.

Annotations CSV (``annotations_test.csv`` or ``--csv``) with ``image_id, class_name, x_min, y_min, x_max,
y_max``; boxes are merged per (image, class) over all radiologists; only the MS-CXR finding classes are
kept; prompt = "The patient has {class in lower case}". Images are found under ``root`` as
``{image_id}`` + one of .dicom, .dcm, .png, .jpg (searched recursively once).
"""

from __future__ import annotations

from pathlib import Path

from medground.datasets.base import SampleRows, assemble, checked_size, csv_rows, parse_box, parse_number
from medground.errors import DatasetError

VINDR_TO_MS_CXR = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
                   "Edema": "Edema", "Lung Opacity": "Lung Opacity", "Pleural effusion": "Pleural Effusion",
                   "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax"}
IMAGE_SUFFIXES = (".dicom", ".dcm", ".png", ".jpg", ".jpeg")
REQUIRED_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")


def read_vindr(root: Path, csv: Path | None = None):
    """VinDr-CXR samples of the MS-CXR classes, every kept row checked; the crop filter comes after.

    Args:
        root: the folder searched (recursively) for the images.
        csv: the annotations; None: ``root/annotations_test.csv``.

    Raises:
        DatasetError: no annotations, an image not found under ``root``, or a row that cannot be used.
    """
    csv = csv or root / "annotations_test.csv"
    if not Path(csv).is_file():
        raise DatasetError(f"VinDr-CXR annotations not found: {csv}; pass --csv")
    images = {p.stem: p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    groups: dict[tuple[str, str], SampleRows] = {}
    with csv_rows(csv, required=REQUIRED_COLUMNS) as reader:
        for number, row in enumerate(reader, start=2):
            where = f"{csv} row {number}"
            category = VINDR_TO_MS_CXR.get((row["class_name"] or "").strip())
            if category is None or not (row.get("x_min") or "").strip():
                continue
            x0, y0, x1, y1 = (parse_number(row[k], k, where) for k in ("x_min", "y_min", "x_max", "y_max"))
            image_id = row["image_id"].strip()
            if image_id not in images:
                raise DatasetError(f"{where}: VinDr-CXR image {image_id} not found under {root}")
            phrase = f"The patient has {category.lower()}"
            group = groups.setdefault((image_id, category), SampleRows(images[image_id], image_id, phrase,
                                                                      category))
            group.boxes.append(parse_box(x0, y0, x1 - x0, y1 - y0, where))
            group.rows.append(where)
    return assemble("vindr", groups.values(), lambda g: checked_size(g.image, g.rows[0]))
