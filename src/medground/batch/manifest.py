"""Manifests: CSV, JSONL or Parquet files that list images and the phrases to ground in them, read as a stream.

Columns: ``image`` (a path; a relative one is taken from ``root``, by default the manifest's folder), then either
``phrase`` (one per row) or ``phrases`` (several: a list in JSONL and Parquet, ``|``-separated text in CSV), and
optionally ``id`` (any value, kept as text). Other columns are ignored. Rows are numbered from 0 in file order, and
an output row is keyed by (row, phrase_index).

The plan: rows are read in windows of ``window_rows``; inside a window the phrases of one image are gathered (in
order of first appearance) and the images are cut into units of ``images_per_unit``. A unit is the grain of work, of
output and of resume. The plan is a pure function of the file and those two numbers, so a resumed run, or the other
engine, cuts exactly the same units and so computes exactly the same maps. Memory holds one window; rows of one image
further apart than a window land in different units and that image is inverted once per unit (sort such a
manifest by image).
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from medground.errors import DatasetError
from medground.text_input import loads_json

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
CSV_PHRASE_SEPARATOR = "|"
PARQUET_CHUNK_ROWS = 4096
IMAGES_PER_UNIT = 16
WINDOW_ROWS = 8192


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row, read and checked: its number, id, image and phrases."""

    row: int
    id: str | None
    image: str
    """The path as the manifest writes it (what the output repeats)."""
    path: str
    """The path read: ``image`` itself when absolute, else under the manifest's root."""
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class Query:
    """One output row to produce: a phrase of a manifest row."""

    row: int
    phrase_index: int
    id: str | None
    image: str
    phrase: str


@dataclass(frozen=True)
class ImageQueries:
    """One image of a unit and every query on it: its phrases share one inversion."""

    path: str
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class Unit:
    """Images grounded together (one call of the Grounder): the grain of work, output and resume."""

    index: int
    images: tuple[ImageQueries, ...]

    @property
    def size(self) -> int:
        """Output rows of the unit: one per query."""
        return sum(len(image.queries) for image in self.images)


@dataclass(frozen=True)
class Survey:
    """What a full pass over the manifest found, before any grounding."""

    rows: int
    queries: int
    units: int
    images: int
    """Images counted once per unit they appear in (= inversions the run will do)."""


@dataclass(frozen=True)
class Manifest:
    """A manifest file, its image root and its format; rows and the plan are streamed, never held whole."""

    path: Path
    root: Path
    format: str

    @classmethod
    def open(cls, path: Path, root: Path | None = None) -> Manifest:
        """Check the file, its format and its columns (for CSV and Parquet, from the header) before any work."""
        path = Path(path)
        try:
            found = path.is_file()
        except OSError as exc:  # a name too long for the file system
            raise DatasetError(f"cannot open manifest {str(path)[:200]}: {exc.strerror or exc}") from None
        if not found:
            raise DatasetError(f"manifest not found: {path}")
        kind = FORMATS.get(path.suffix.lower())
        if kind is None:
            raise DatasetError(f"manifest {path} must end in one of {sorted(FORMATS)} (CSV, JSON lines or Parquet)")
        root = Path(root) if root is not None else path.parent
        if not root.is_dir():
            raise DatasetError(f"image root not found: {root}")
        manifest = cls(path, root, kind)
        if kind != "jsonl":
            _check_columns(manifest.columns(), str(path))
        return manifest

    def columns(self) -> list[str]:
        """The header's columns (CSV, Parquet; JSON lines have none: each line is checked)."""
        if self.format == "csv":
            try:
                with self._open_text() as handle:
                    return next(csv.reader(handle), [])
            except csv.Error as exc:
                raise DatasetError(f"manifest {self.path} is not a readable CSV: {exc}") from None
        if self.format == "parquet":
            return list(_parquet_file(self.path).schema_arrow.names)
        return []

    def fingerprint(self) -> str:
        """SHA-256 of the file: a resumed run must read the same manifest."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def rows(self) -> Iterator[ManifestRow]:
        """The rows in file order, each checked; a row that cannot be used is a DatasetError naming it."""
        for number, (where, record) in enumerate(self._records()):
            yield self._row(number, where, record)

    def units(self, images_per_unit: int, window_rows: int) -> Iterator[Unit]:
        """The plan (see the module docstring)."""
        index = 0
        rows = self.rows()
        while window := list(islice(rows, window_rows)):
            by_path: dict[str, list[Query]] = {}
            for row in window:
                queries = by_path.setdefault(row.path, [])
                queries.extend(Query(row.row, k, row.id, row.image, phrase) for k, phrase in enumerate(row.phrases))
            images = [ImageQueries(path, tuple(queries)) for path, queries in by_path.items()]
            for start in range(0, len(images), images_per_unit):
                yield Unit(index, tuple(images[start : start + images_per_unit]))
                index += 1

    def survey(self, images_per_unit: int, window_rows: int) -> Survey:
        """Count rows, queries and units, and check that every image file exists (a missing one is almost always
        a wrong root or manifest, so it stops the run before any work; an unreadable one becomes an error row)."""
        rows = queries = units = images = 0
        missing: list[str] = []
        missing_count = 0
        for unit in self.units(images_per_unit, window_rows):
            units += 1
            images += len(unit.images)
            queries += unit.size
            rows = max(rows, 1 + max(q.row for image in unit.images for q in image.queries))
            for image in unit.images:
                if not os.path.isfile(image.path):
                    missing_count += 1
                    if len(missing) < 3:
                        missing.append(f"row {image.queries[0].row}: {image.path}")
        if missing_count:
            raise DatasetError(f"{missing_count} image file(s) of {self.path} not found, e.g. {'; '.join(missing)} "
                               f"(relative paths are taken from {self.root}; pass --root)")
        if not queries:
            raise DatasetError(f"manifest {self.path} has no rows")
        return Survey(rows=rows, queries=queries, units=units, images=images)

    def _open_text(self):
        from medground.text_input import open_text

        return open_text(self.path, "manifest", DatasetError)

    def _records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            if self.format == "csv":
                yield from self._csv_records()
            elif self.format == "jsonl":
                yield from self._jsonl_records()
            else:
                yield from self._parquet_records()
        except csv.Error as exc:
            raise DatasetError(f"manifest {self.path} is not a readable CSV: {exc}") from None

    def _csv_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._open_text() as handle:
            reader = csv.DictReader(handle)
            for number, record in enumerate(reader):
                where = f"{self.path} row {number} (line {reader.line_num})"
                if None in record or None in record.values():
                    raise DatasetError(f"{where}: has a different number of fields than the header")
                if "phrases" in record:
                    record["phrases"] = record["phrases"].split(CSV_PHRASE_SEPARATOR)
                yield where, record

    def _jsonl_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._open_text() as handle:
            number = 0
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{self.path} row {number} (line {line_number})"
                record = loads_json(line, where, DatasetError)
                if not isinstance(record, dict):
                    raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
                _check_columns(list(record), where)
                number += 1
                yield where, record

    def _parquet_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        columns = [c for c in ("id", "image", "phrase", "phrases") if c in self.columns()]
        number = 0
        for batch in _parquet_file(self.path).iter_batches(batch_size=PARQUET_CHUNK_ROWS, columns=columns):
            for record in batch.to_pylist():
                yield f"{self.path} row {number}", record
                number += 1

    def _row(self, number: int, where: str, record: dict[str, Any]) -> ManifestRow:
        image = record.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DatasetError(f"{where}: image must be a non-empty path, got {image!r}")
        if "phrases" in record:
            phrases = record["phrases"]
            if not isinstance(phrases, (list, tuple)) or not phrases:
                raise DatasetError(f"{where}: phrases must be a non-empty list, got {phrases!r}")
        else:
            phrases = [record.get("phrase")]
        cleaned = []
        for phrase in phrases:
            if not isinstance(phrase, str) or not phrase.strip():
                raise DatasetError(f"{where}: every phrase must be non-empty text, got {phrase!r}")
            cleaned.append(phrase.strip())
        identifier = record.get("id")
        identifier = None if identifier is None or str(identifier) == "" else str(identifier)
        path = Path(image) if Path(image).is_absolute() else self.root / image
        return ManifestRow(row=number, id=identifier, image=image, path=str(path), phrases=tuple(cleaned))


def _check_columns(columns: list[str], where: str) -> None:
    if "image" not in columns:
        raise DatasetError(f"{where}: no 'image' column (found {columns})")
    has = [c for c in ("phrase", "phrases") if c in columns]
    if len(has) != 1:
        raise DatasetError(f"{where}: needs exactly one of the columns 'phrase' or 'phrases' (found {columns})")


def _parquet_file(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"manifest {path} is not a readable Parquet file: {exc}") from None
