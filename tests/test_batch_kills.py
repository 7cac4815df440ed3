"""``medground batch`` SIGKILLed at seeded random points (during start-up, while run.json is written, while a part
is written, mid-run) and resumed to completion after each kill: every (image, phrase) is in the output exactly once,
every stored map equals an uninterrupted run's bit for bit, and no temporary file is left behind.

The killed runs are subprocesses whose writes pause half-way (parts) or before the rename (run.json), so a kill can
be aimed at a write; the resumed runs are this process, with an unpatched writer."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from manifests import phantom_rows, read_output, toy_job, write_manifest

from medground.batch.manifest import Manifest
from medground.batch.runner import run_batch
from medground.batch.store import read_done_units

TESTS = Path(__file__).resolve().parent
SEED = 20260
IMAGES = 4
PHRASES = ("cardiomegaly", "left pleural effusion", "right upper lobe opacity")
TINY = {"inference_steps": 10, "window_start": 1, "window_stop": 4}
"""A very short grid for the toy model: the same code paths in a fraction of the time."""
PAUSE_S = 1.0
"""How long a killed run's writes stay half-done (a kill aimed at a write lands within this)."""
WAIT_S = 180
"""The longest any killed run may take to reach the point it is killed at."""

KILLED_RUN = """
import os, sys, time
from pathlib import Path

import torch

torch.set_num_threads({threads})  # the same sums as the test process
sys.path.insert(0, {tests!r})
PAUSE_S = {pause}


def slow_parts():
    # each part is written in two halves with a pause between them: a kill in the pause tears it
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_table = pq.write_table

    def torn(table, where, **kwargs):
        sink = pa.BufferOutputStream()
        write_table(table, sink, **kwargs)
        data = sink.getvalue().to_pybytes()
        with open(where, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            time.sleep(PAUSE_S)
            handle.write(data[len(data) // 2:])

    pq.write_table = torn


def slow_renames():
    # an atomic write's temporary file (run.json's) stays a while before its rename
    replace = os.replace

    def paused(source, target):
        if ".tmp-" in os.fspath(source):
            time.sleep(PAUSE_S)
        return replace(source, target)

    os.replace = paused


if __name__ == "__main__":
    from manifests import toy_job
    from medground.batch.manifest import Manifest
    from medground.batch.runner import run_batch

    slow_parts()
    slow_renames()
    run_batch(Manifest.open(Path(sys.argv[1])), Path(sys.argv[2]), toy_job(), overrides={tiny!r},
              images_per_unit=1, part_rows=1, resume=sys.argv[3] == "resume", loader_workers=0, progress=False)
"""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Four phantoms, each with the same three phrases: 12 output rows in 4 units (one image each)."""
    folder = tmp_path_factory.mktemp("kills")
    rows = phantom_rows(folder, 4_100_000, IMAGES)
    for row in rows:
        row["phrases"] = list(PHRASES)
    return write_manifest(folder / "manifest.jsonl", rows)


@pytest.fixture(scope="module")
def reference(manifest, tmp_path_factory) -> dict[tuple[int, int], dict]:
    """The rows of an uninterrupted run, by (row, phrase_index)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = _complete(manifest, out, resume=False)
    assert summary.rows == summary.computed == IMAGES * len(PHRASES) and summary.errors == 0
    return read_output(out)


@dataclass
class Run:
    """A killed run's process and the file its output goes to."""

    process: subprocess.Popen
    log: Path


@pytest.fixture()
def killed_runs(tmp_path) -> Iterator[Callable[..., Run]]:
    """Starts the killed runs, each in a process group of its own, and removes what is left of the groups (the
    DataLoader worker a killed run leaves orphaned) at the end."""
    script = tmp_path / "killed_run.py"
    script.write_text(KILLED_RUN.format(threads=torch.get_num_threads(), tests=str(TESTS), pause=PAUSE_S, tiny=TINY))
    started: list[Run] = []

    def start(manifest: Path, out: Path, resume: bool) -> Run:
        log = tmp_path / f"run-{len(started)}.log"
        with log.open("w") as sink:
            process = subprocess.Popen([sys.executable, str(script), str(manifest), str(out),
                                        "resume" if resume else "fresh"], stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        started.append(Run(process, log))
        return started[-1]

    yield start
    for run in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.process.pid, signal.SIGKILL)
        run.process.wait(timeout=30)


def test_batch_killed_at_random_points_resumes_to_the_uninterrupted_rows(manifest, reference, killed_runs, tmp_path):
    rng = random.Random(SEED)
    out = tmp_path / "out"
    parts = out / "parts"

    # 1. very early: the interpreter is still starting or importing (no model loaded, nothing grounded)
    run = killed_runs(manifest, out, resume=False)
    time.sleep(rng.uniform(0.2, 1.5))
    _kill(run)
    assert not parts.is_dir() or not list(parts.glob("part-*"))
    _check_killed_folder(out, reference)
    _check_completes(manifest, out, tmp_path / "completed-1", reference)

    # 2. while run.json is written (the resumed run's start, after the model loaded): its temporary file is left
    run = killed_runs(manifest, out, resume=True)
    _wait_for(run, lambda: list(out.glob(".run.json.tmp-*")))
    time.sleep(rng.uniform(0.0, 0.3))
    _kill(run)
    assert list(out.glob(".run.json.tmp-*")), "the kill missed run.json's write"
    _check_killed_folder(out, reference)
    _check_completes(manifest, out, tmp_path / "completed-2", reference)

    # 3. half-way through writing the k-th part of this run: a torn temporary part is left
    run = killed_runs(manifest, out, resume=True)
    k = rng.randint(1, 2)
    seen: set[str] = set()

    def kth_part_started() -> bool:
        seen.update(path.name for path in parts.glob(".part-*.tmp"))
        return len(seen) >= k

    _wait_for(run, kth_part_started)
    time.sleep(rng.uniform(0.0, 0.3))
    _kill(run)
    torn = list(parts.glob(".part-*.tmp"))
    assert torn, "the kill missed the part's write"
    assert all(path.read_bytes()[-4:] != b"PAR1" for path in torn)  # a half-written Parquet file
    assert not list(out.glob(".run.json.tmp-*"))  # kill 2's leftover, removed by this run's start
    _check_killed_folder(out, reference)
    _check_completes(manifest, out, tmp_path / "completed-3", reference)

    # 4. anywhere in the middle of the run, once it committed a part of its own
    committed = set(read_done_units(parts))
    run = killed_runs(manifest, out, resume=True)
    _wait_for(run, lambda: set(read_done_units(parts)) - committed)
    time.sleep(rng.uniform(0.0, 1.0))
    _kill(run)
    done = read_done_units(parts)
    assert len(done) < IMAGES, "the run finished before it was killed"
    _check_killed_folder(out, reference)
    summary = _complete(manifest, out, resume=True)
    assert summary.computed == summary.rows - sum(done.values())
    _check_complete_folder(out, reference)


def _complete(manifest: Path, out: Path, resume: bool):
    return run_batch(Manifest.open(manifest), out, toy_job(), overrides=TINY, images_per_unit=1, resume=resume,
                     loader_workers=0, progress=False)


def _kill(run: Run) -> None:
    assert run.process.poll() is None, f"the run ended before it was killed:\n{run.log.read_text()}"
    run.process.send_signal(signal.SIGKILL)
    assert run.process.wait(timeout=30) == -signal.SIGKILL


def _wait_for(run: Run, condition: Callable[[], object]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if run.process.poll() is not None:
            pytest.fail(f"the run ended with {run.process.returncode} before the point it was to be killed at:\n"
                        f"{run.log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the run did not reach the point it was to be killed at within {WAIT_S} s")
        time.sleep(0.01)


def _check_killed_folder(out: Path, reference: dict[tuple[int, int], dict]) -> None:
    """What a kill leaves: every committed part readable, each unit in one part, each row as the reference's."""
    parts = out / "parts"
    if not parts.is_dir():
        return
    done = read_done_units(parts)  # raises on an unreadable part or a unit in two parts
    assert all(rows == len(PHRASES) for rows in done.values())
    if done:
        _check_rows(read_output(out), reference, expected=len(done) * len(PHRASES))


def _check_completes(manifest: Path, out: Path, copy: Path, reference: dict[tuple[int, int], dict]) -> None:
    """A copy of the killed folder, resumed to the end in this process, holds exactly the reference's rows."""
    if out.exists():  # a kill during start-up may come before the folder is made
        shutil.copytree(out, copy)
    before = sum(read_done_units(copy / "parts").values()) if (copy / "parts").is_dir() else 0
    summary = _complete(manifest, copy, resume=True)
    assert summary.rows == IMAGES * len(PHRASES) and summary.computed == summary.rows - before
    _check_complete_folder(copy, reference)


def _check_complete_folder(out: Path, reference: dict[tuple[int, int], dict]) -> None:
    _check_rows(read_output(out), reference, expected=IMAGES * len(PHRASES))
    files = {path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file()}
    parts = {name for name in files if name.startswith("parts/part-") and name.endswith(".parquet")}
    assert files - parts == {"run.json", ".lock"}, f"files left behind: {sorted(files - parts - {'run.json', '.lock'})}"


def _check_rows(rows: dict[tuple[int, int], dict], reference: dict[tuple[int, int], dict], expected: int) -> None:
    """``expected`` rows (``read_output`` fails on a key seen twice), each equal to the reference's but for timings,
    its map bit for bit."""
    assert len(rows) == expected and set(rows) <= set(reference)
    for key, row in rows.items():
        want = reference[key]
        assert np.array_equal(np.asarray(row["map"], dtype=np.float32), np.asarray(want["map"], dtype=np.float32))
        assert {k: v for k, v in row.items() if not k.endswith("_s")} == \
            {k: v for k, v in want.items() if not k.endswith("_s")}
