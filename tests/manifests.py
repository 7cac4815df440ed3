"""Phantom images on disk and manifests that list them, for the batch and Ray tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medground.batch.work import BatchJob
from medground.datasets.phantoms import generate_phantom

FAST_TOY = {"inference_steps": 40, "window_start": 4, "window_stop": 16}
"""A shorter grid for the toy model: the same code paths in a fraction of the time."""


def toy_job(**changes) -> BatchJob:
    """The toy model, 2 images per inversion batch, 32 x 32 float32 maps (run it with ``overrides=FAST_TOY``)."""
    options = {"model": "toy", "device": "cpu", "precision": "fp32", "text_encoder": None, "batch_size": 2,
               "compile": False, "map_side": 32, "map_dtype": "float32"}
    return BatchJob(**{**options, **changes})


def phantom_rows(folder: Path, seed: int, n: int) -> list[dict]:
    """PNG files of phantoms ``seed .. seed + n - 1`` under ``folder/images`` and one manifest row per phantom with
    its finding phrases (or "cardiomegaly" when it has none)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for offset in range(n):
        phantom = generate_phantom(seed + offset)
        name = f"images/phantom-{phantom.seed}.png"
        Image.fromarray(np.round(phantom.image * 255).astype(np.uint8)).save(folder / name)
        phrases = [f.phrase for f in phantom.findings] or ["cardiomegaly"]
        rows.append({"id": f"p{phantom.seed}", "image": name, "phrases": phrases})
    return rows


def write_manifest(path: Path, rows: list[dict]) -> Path:
    """``rows`` (id, image, phrases) as CSV (phrases ``|``-separated), JSONL or Parquet, by ``path``'s suffix."""
    if path.suffix == ".csv":
        lines = ["id,image,phrases"] + [f"{r['id']},{r['image']},{'|'.join(r['phrases'])}" for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_output(out: Path) -> dict[tuple[int, int], dict]:
    """The rows of a batch output folder by (row, phrase_index); fails on a key seen twice."""
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "parts").to_pylist()
    keyed = {(r["row"], r["phrase_index"]): r for r in rows}
    assert len(keyed) == len(rows), "a (row, phrase_index) was written twice"
    return keyed
