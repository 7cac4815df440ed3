"""A run folder on disk: ``run.json`` (settings), ``samples.jsonl`` (one record per sample), ``previews/``, summaries.

Guarantees:
- one writer per folder: an exclusive lock on ``.lock`` for as long as the writer is open (released by the OS if the
  process dies), so a second run on the same folder fails at once instead of writing every sample twice;
- records are appended a group at a time with one write, then flushed and fsynced: a kill loses at most the group in
  flight, and a crash can tear only the last line, which only the writer cuts off, when it resumes;
- reading never modifies the folder; a corrupt line anywhere but last is an error naming the file and line;
- no symlink is followed: a folder or file that is a link is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medground.errors import RunDirError
from medground.outputs import (
    check_resumable,
    check_writable_folder,
    exclusive_lock,
    free_space,
    json_bytes,
    npy_bytes,
    read_json_settings,
    refuse_link,
    remove_atomic_leftovers,
    write_atomic,
)

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
PREVIEW_SIDE = 160


def parse_records(path: Path, text: bytes) -> tuple[list[dict[str, Any]], int]:
    """Records of a samples file and the byte length of its intact part (a torn last line is not intact)."""
    records, intact = [], 0
    lines = text.split(b"\n")
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not line.strip():
            if not last:
                intact += len(line) + 1
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ValueError("not a sample record")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            if last:  # no newline after it: a write the crash cut short
                break
            raise RunDirError(f"{path} line {number} is corrupt ({exc}); the lines after it are kept. Fix or remove "
                              "that line by hand: medground never deletes records it cannot read") from None
        records.append(record)
        intact += len(line) + (0 if last else 1)
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if record["id"] in seen:
            raise RunDirError(f"{path} holds sample {record['id']!r} twice (records {seen[record['id']] + 1} and "
                              f"{index + 1}); two writers must have shared this folder")
        seen[record["id"]] = index
    return records, intact


def read_records(folder: Path) -> list[dict[str, Any]]:
    """The complete records of a run folder, without touching it."""
    path = refuse_link(Path(folder) / SAMPLES_FILE)
    if not path.is_file():
        return []
    return parse_records(path, path.read_bytes())[0]


def read_run(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``run.json`` and the records of an existing run folder; RunDirError if it is not one."""
    folder = Path(folder)
    try:
        found = refuse_link(folder / RUN_FILE).is_file()
    except OSError as exc:  # a name too long for the file system (Python < 3.12 raises)
        raise RunDirError(f"cannot open run folder {str(folder)[:200]}: {exc.strerror or exc}") from None
    run_file = folder / RUN_FILE
    if not found:
        raise RunDirError(f"{folder} is not an evaluation run folder: no {RUN_FILE}")
    settings = read_json_settings(run_file, "an evaluation run")
    if "method" not in settings:
        raise RunDirError(f"{run_file} is not a run description (no 'method')")
    return settings, read_records(folder)


def preview(heatmap: np.ndarray) -> np.ndarray:
    """A float16 copy with the longer side at most PREVIEW_SIDE, for contact sheets."""
    step = preview_step(*heatmap.shape)
    return heatmap[::step, ::step].astype(np.float16)


def preview_step(height: int, width: int) -> int:
    """The stride that brings the longer side to at most ``PREVIEW_SIDE`` (previews and contact sheets share it)."""
    return max(1, int(np.ceil(max(height, width) / PREVIEW_SIDE)))


class RunWriter:
    """The one writer of a run folder (use as a context manager; see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @contextlib.contextmanager
    def open(self, run_record: dict[str, Any], resume: bool) -> Iterator[RunWriter]:
        """Lock the folder for the block and start the run, or resume it when ``run_record`` equals the recorded
        one (``resume``); a torn last line of ``samples.jsonl`` is cut off. Anything else is a RunDirError."""
        check_writable_folder(self.folder)
        with exclusive_lock(self.folder):
            self._start(run_record, resume)
            yield self

    def _start(self, run_record: dict[str, Any], resume: bool) -> None:
        for folder in (self.folder, self.folder / "previews"):  # a kill while run.json or a preview was written
            remove_atomic_leftovers(folder)
        run_file = refuse_link(self.folder / RUN_FILE)
        samples = refuse_link(self.folder / SAMPLES_FILE)
        if run_file.is_file():
            if not resume:
                raise RunDirError(f"{self.folder} already holds a run; pass --resume to continue it or choose "
                                  "another --out")
            previous, _ = read_run(self.folder)
            check_resumable(self.folder, previous, run_record)
        elif samples.is_file() and samples.stat().st_size:
            raise RunDirError(f"{samples} exists without {RUN_FILE}: not a run medground started; choose another --out")
        if samples.is_file():  # the writer alone may cut a torn last line, and only that
            data = samples.read_bytes()
            _, intact = parse_records(samples, data)
            with samples.open("r+b") as handle:
                handle.truncate(intact)
                if intact and not data[:intact].endswith(b"\n"):  # a whole last record that lost its newline
                    handle.seek(intact)
                    handle.write(b"\n")
        write_atomic(run_file, json_bytes(run_record))

    def records(self) -> list[dict[str, Any]]:
        """The complete records written so far (what a resume skips)."""
        return read_records(self.folder)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records with one write, then fsync; a failed write (a full disk) is cut back off, so the file
        keeps only whole records."""
        payload = "".join(json.dumps(record) + "\n" for record in records).encode()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            descriptor = os.open(self.folder / SAMPLES_FILE, flags, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot append to {self.folder / SAMPLES_FILE}: {exc.strerror or exc}") from None
        try:
            size = os.fstat(descriptor).st_size
            try:
                if os.write(descriptor, payload) != len(payload):
                    raise OSError(28, "No space left on device (short write)")
                os.fsync(descriptor)
            except OSError as exc:
                os.ftruncate(descriptor, size)
                raise RunDirError(f"cannot append to {self.folder / SAMPLES_FILE}: {exc.strerror or exc} "
                                  f"({free_space(self.folder)}); the records before are intact, --resume continues"
                                  ) from None
        finally:
            os.close(descriptor)

    def save_preview(self, sample_id: str, heatmap: np.ndarray) -> None:
        """A small float16 copy of a sample's map (``preview``), for the contact sheet."""
        folder = refuse_link(self.folder / "previews")
        folder.mkdir(exist_ok=True)
        write_atomic(folder / f"{sample_id}.npy", npy_bytes(preview(heatmap)))

    def write(self, name: str, data: bytes) -> None:
        """One file of the run (a summary, the contact sheet), written atomically."""
        write_atomic(self.folder / name, data)
