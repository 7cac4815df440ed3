"""The output folder of ``medground batch``: ``run.json`` (what is computed), ``parts/*.parquet`` (the rows), ``.lock``.

Guarantees (the same as ``evaluate.store`` gives evaluation runs):
- one writer per folder, through the same exclusive lock;
- a part holds whole units and is written under a temporary name, fsynced, then renamed: a part is complete or
  absent. A kill loses only the units not yet in a part, and a resume recomputes exactly those, so no row is lost
  and none is written twice;
- only the writer removes the temporary files a kill left (of parts and of ``run.json``); a part that is not
  readable Parquet, or a unit found in two parts, is an error naming the files (medground never deletes rows it
  cannot read).

Read the result with ``pyarrow.parquet.read_table(OUT / "parts")`` or ``pandas.read_parquet(OUT / "parts")``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medground.errors import RunDirError
from medground.outputs import (
    check_resumable,
    check_writable_folder,
    exclusive_lock,
    free_space,
    json_bytes,
    read_json_settings,
    refuse_link,
    remove_atomic_leftovers,
    write_atomic,
)

RUN_FILE = "run.json"
SESSIONS_KEY = "sessions"
"""run.json's list of the runs that wrote into the folder (not compared on resume)."""
PARTS = "parts"
PART_ROWS = 4096
"""Rows buffered before a part is written (bounds memory: a 64 x 64 float16 map is 8 KB)."""
PART_SECONDS = 60.0
"""A part is also written once the oldest buffered unit is this old: a kill loses at most about this much work."""
MAP_DTYPES = ("float16", "float32")


def output_schema(map_dtype: str, map_side: int) -> Any:
    """One row per (manifest row, phrase). ``map``: the final map in the model's square input (the image's centre
    crop), block-averaged to ``map_side`` x ``map_side``, row-major; null on an error row."""
    import pyarrow as pa

    box = pa.struct([("x", pa.int32()), ("y", pa.int32()), ("w", pa.int32()), ("h", pa.int32()),
                     ("score", pa.float32())])
    value = pa.float16() if map_dtype == "float16" else pa.float32()
    return pa.schema([
        ("unit", pa.int64()), ("row", pa.int64()), ("phrase_index", pa.int32()), ("id", pa.string()),
        ("image", pa.string()), ("phrase", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("boxes", pa.list_(box)), ("mask_area", pa.int64()), ("flat", pa.bool_()),
        # a plain list (map_side ** 2 values, or null on an error row): Parquet writers before pyarrow 26 refuse
        # fixed-size lists that hold nulls
        ("map", pa.list_(value)),
        ("inversion_s", pa.float32()), ("conditional_s", pa.float32()), ("postprocess_s", pa.float32()),
        ("error", pa.string()),
    ], metadata={"map_side": str(map_side), "map": "final map in the model's centre crop, block-averaged, row-major"})


class BatchWriter:
    """The one writer of a batch output folder (see the module docstring); use ``with writer.open(...)``.

    Args:
        folder: the output folder.
        schema: the Parquet schema of a row (``output_schema``).
        part_rows: rows buffered before a part is written.
        part_seconds: a part is also written once its oldest buffered unit is this old.
    """

    def __init__(self, folder: Path, schema: Any, part_rows: int = PART_ROWS,
                 part_seconds: float = PART_SECONDS) -> None:
        self.folder = Path(folder)
        self.parts = self.folder / PARTS
        self.schema = schema
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self.done: dict[int, int] = {}
        """Rows per unit already in parts (read at open, grown by each part written)."""
        self._buffer: dict[int, list[dict[str, Any]]] = {}
        self._oldest = 0.0

    @contextlib.contextmanager
    def open(self, settings: dict[str, Any], resume: bool,
             session: dict[str, Any] | None = None) -> Iterator[BatchWriter]:
        """``settings`` must match on resume; ``session`` (device, engine, batch size: what may change the last float
        bits but no row) is appended to the run's ``sessions`` list, so a resumed run says how each part was made.

        Args:
            settings: what the rows depend on (manifest and its SHA-256, model, config, map side and type).
            resume: continue the run in the folder; without it, a folder that holds a run is refused.
            session: this invocation's engine, device and batch size; None: only its row count is recorded.

        Raises:
            RunDirError: the folder is not writable or is locked by a live writer, holds a run (without
                ``resume``) or one with other settings, or holds parts without ``run.json``.
        """
        check_writable_folder(self.folder)
        with exclusive_lock(self.folder):
            self._start(settings, resume, session or {})
            try:
                yield self
            finally:  # whole units computed before an error or an interrupt are kept
                self.flush()

    def _start(self, settings: dict[str, Any], resume: bool, session: dict[str, Any]) -> None:
        run_file = refuse_link(self.folder / RUN_FILE)
        parts = refuse_link(self.parts)
        sessions: list[Any] = []
        if run_file.is_file():
            if not resume:
                raise RunDirError(f"{self.folder} already holds a batch run; pass --resume to continue it or choose "
                                  "another --out")
            previous = _read_settings(run_file)
            sessions = previous.pop(SESSIONS_KEY, [])
            sessions = sessions if isinstance(sessions, list) else []
            check_resumable(self.folder, previous, settings)
        elif parts.is_dir() and any(parts.iterdir()):
            raise RunDirError(f"{parts} exists without {RUN_FILE}: not a run medground started; choose another --out")
        parts.mkdir(exist_ok=True)
        for leftover in parts.glob(".part-*.tmp"):  # a kill during a write; its rows were never committed
            leftover.unlink()
        remove_atomic_leftovers(self.folder)  # a kill while run.json was written
        self.done = read_done_units(parts)
        record = {**settings, SESSIONS_KEY: [*sessions, {**session, "rows_before": sum(self.done.values())}]}
        write_atomic(run_file, json_bytes(record))

    def add(self, unit: int, rows: Sequence[dict[str, Any]]) -> bool:
        """Buffer a whole unit's rows (False if the unit is already written or buffered); writes a part when due."""
        if unit in self.done or unit in self._buffer:
            return False
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer[unit] = list(rows)
        buffered = sum(len(r) for r in self._buffer.values())
        if buffered >= self.part_rows or time.monotonic() - self._oldest >= self.part_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the buffered units as one part: temporary name, fsync, rename, fsync of the folder."""
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        units = sorted(self._buffer)
        table = pa.Table.from_pylist([row for unit in units for row in self._buffer[unit]], schema=self.schema)
        final = self.parts / f"part-{units[0]:09d}.parquet"
        temporary = self.parts / f".part-{units[0]:09d}.tmp"
        try:
            pq.write_table(table, temporary, compression="zstd")
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, final)
            _fsync_folder(self.parts)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise RunDirError(f"cannot write {final}: {exc.strerror or exc} ({free_space(self.parts)}); the parts "
                              "written before are intact, --resume continues") from None
        self.done.update({unit: len(self._buffer[unit]) for unit in units})
        self._buffer.clear()


def read_done_units(parts: Path) -> dict[int, int]:
    """Rows per unit over all parts; a unit in two parts or an unreadable part is a RunDirError."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    done: dict[int, int] = {}
    owner: dict[int, Path] = {}
    for path in sorted(parts.glob("part-*.parquet")):
        try:
            units = pq.read_table(refuse_link(path), columns=["unit"]).column("unit")
        except (OSError, pa.ArrowException) as exc:
            raise RunDirError(f"{path} is not readable Parquet ({exc}); move it away by hand: medground never deletes "
                              "rows it cannot read") from None
        counts = pc.value_counts(units).to_pylist()
        for entry in counts:
            unit = entry["values"]
            if unit in done:
                raise RunDirError(f"unit {unit} is in both {owner[unit]} and {path}; two writers must have shared "
                                  f"{parts.parent}")
            done[unit], owner[unit] = entry["counts"], path
    return done


def _read_settings(run_file: Path) -> dict[str, Any]:
    settings = read_json_settings(run_file, "a batch run")
    if settings.get("command") != "batch":
        raise RunDirError(f"{run_file} does not describe a batch run")
    return settings


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
