"""How ``tests/data/nih-mini`` was made from the shared NIH ChestX-ray14 folder (kept for provenance; not run by the
tests): one or two images per finding class, halved to 512 x 512 with Lanczos, boxes scaled by the same factor.

    python tests/data/derive_nih_mini.py ../shared/data/nih-cxr14-bbox tests/data/nih-mini
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

from PIL import Image

IMAGES = ("00000072_000.png", "00000457_004.png", "00004822_051.png", "00009437_008.png", "00021840_016.png",
          "00027833_022.png", "00030162_029.png", "00003789_000.png", "00025252_053.png")
SIDE = 512


def main(source: Path, out: Path) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    with open(source / "BBox_List_2017.subset.csv", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        for row in reader:
            if row and row[0] in IMAGES:
                rows.append(row)
    factors = {}
    for name in IMAGES:
        with Image.open(source / "images" / name) as image:
            factors[name] = SIDE / image.size[0]
            image.convert("L").resize((SIDE, round(image.size[1] * factors[name])), Image.LANCZOS).save(
                out / "images" / name, optimize=True)
    with open(out / "BBox_List_2017.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            scale = factors[row[0]]
            writer.writerow(row[:2] + [f"{float(v) * scale:.6f}" for v in row[2:6]] + row[6:])
    shutil.copy(source / "ATTRIBUTION.txt", out / "ATTRIBUTION.txt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
