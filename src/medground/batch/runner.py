"""``medground batch``: survey the manifest, load the model, ground every pending unit into the output folder, check
that every row of the manifest is there exactly once.

Local engine: DataLoader workers prepare units ahead (``loader``), this process grounds them. Ray engine: the same
units and the same recipe on a cluster (``medground.cluster``). Either way the writer is in this process and alone,
so a killed run resumes the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medground.batch.loader import PendingUnits, prepared_units
from medground.batch.manifest import IMAGES_PER_UNIT, WINDOW_ROWS, Manifest
from medground.batch.store import PART_ROWS, PART_SECONDS, BatchWriter, output_schema
from medground.batch.work import BatchJob, UnitGrounder, map_side_for
from medground.cluster import ClusterOptions, Done, local_executor, ray_executor
from medground.errors import RunDirError


@dataclass(frozen=True)
class BatchSummary:
    """What ``run_batch`` did, for the command's last line (``summary_line``)."""

    rows: int
    """Output rows of the whole manifest (one per phrase of each row)."""
    computed: int
    """Rows computed by this run (the others were already in the folder)."""
    errors: int
    """Error rows among those computed."""
    seconds: float


def run_batch(manifest: Manifest, out: Path, job: BatchJob, *, preset: str = "paper",
              overrides: dict[str, Any] | None = None, resume: bool = False,
              images_per_unit: int = IMAGES_PER_UNIT, window_rows: int = WINDOW_ROWS,
              cluster: ClusterOptions | None = None, loader_workers: int | None = None, progress: bool = True,
              on_unit: Callable[[Done], None] | None = None, part_rows: int = PART_ROWS,
              part_seconds: float = PART_SECONDS) -> BatchSummary:
    """Ground every row of ``manifest`` into ``out/parts`` (see ``batch.store`` for the guarantees).

    Args:
        manifest: the opened manifest (columns checked).
        out: the output folder.
        job: the model, device and output options; its config is resolved here, once, from ``preset`` and
            ``overrides`` against the loaded model, and every unit (and Ray actor) runs that config.
        preset: the recipe.
        overrides: settings on top of it.
        resume: continue an interrupted run in ``out``.
        images_per_unit: images per work unit (the grain of work, output and resume).
        window_rows: manifest rows read at a time (memory holds one window).
        cluster: run on Ray (None: here).
        loader_workers: local engine: processes decoding images ahead (None: by device).
        progress: show a progress bar.
        on_unit: called with every finished unit (tests use it to interrupt a run).
        part_rows: rows buffered before a Parquet part is written.
        part_seconds: a part is also written once its oldest unit is this old.
    """
    from medground.grounder import resolve_config
    from medground.loading import load_model

    started = time.perf_counter()
    survey = manifest.survey(images_per_unit, window_rows)
    model = load_model(job.model, device=job.device, text_encoder=job.text_encoder)
    config = resolve_config(model, preset, overrides)
    job = replace(job, image_size=model.image_size, map_side=map_side_for(model.image_size, job.map_side),
                  config=config.to_dict())
    settings = {"command": "batch", "manifest": str(manifest.path.resolve()), "manifest_sha256": manifest.fingerprint(),
                "root": str(manifest.root.resolve()), "model": job.model, "text_encoder": job.text_encoder,
                "preset": preset, "overrides": overrides or {}, "precision": job.precision,
                "config": job.config, "images_per_unit": images_per_unit, "window_rows": window_rows,
                "map_side": job.map_side, "map_dtype": job.map_dtype}
    writer = BatchWriter(out, output_schema(job.map_dtype, job.map_side), part_rows, part_seconds)
    computed = errors = 0
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "engine": "local" if cluster is None else "ray",
               "device": job.device, "compile": job.compile, "batch_size": job.batch_size or "auto"}
    with writer.open(settings, resume, session):
        done = frozenset(writer.done)
        if cluster is None:
            units = PendingUnits(manifest, images_per_unit, window_rows, done, job.image_size)
            workers = loader_workers if loader_workers is not None else _default_loader_workers(model.device.type)
            results = local_executor(UnitGrounder(job, model))(
                (p.unit.index, p) for p in prepared_units(units, workers, model.device))
        else:
            del model  # the workers load their own
            pending = (u for u in manifest.units(images_per_unit, window_rows) if u.index not in done)
            results = ray_executor(job, cluster)((u.index, u) for u in pending)
        with tqdm(total=survey.queries - sum(writer.done.values()), desc="grounding", unit="phrase",
                  disable=not progress) as bar:
            for result in results:
                if writer.add(result.index, result.result):
                    computed += len(result.result)
                    errors += sum(row["error"] is not None for row in result.result)
                    bar.update(len(result.result))
                if on_unit is not None:
                    on_unit(result)
        writer.flush()
        _check_complete(manifest, writer.done, images_per_unit, window_rows)
    return BatchSummary(rows=survey.queries, computed=computed, errors=errors,
                        seconds=time.perf_counter() - started)


def _default_loader_workers(device_type: str) -> int:
    """On CUDA enough decoders to keep the device fed; on the CPU one (the grounding itself needs the cores)."""
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if device_type == "cuda" else 1


def _check_complete(manifest: Manifest, done: dict[int, int], images_per_unit: int, window_rows: int) -> None:
    """Every unit of the plan is in the parts with all its rows: no row lost (none twice: ``read_done_units``)."""
    for unit in manifest.units(images_per_unit, window_rows):
        if done.get(unit.index) != unit.size:
            raise RunDirError(f"unit {unit.index} has {done.get(unit.index, 0)} of its {unit.size} rows in the "
                              "output; run again with --resume")


def summary_line(summary: BatchSummary, out: Path) -> str:
    """The line ``medground batch`` ends with: rows, what this run computed, error rows, rate, how to read them."""
    rate = summary.computed / summary.seconds if summary.seconds > 0 else 0.0
    return (f"{summary.rows} rows in {out / 'parts'} ({summary.computed} computed now, {summary.errors} of them error "
            f"rows) in {summary.seconds:.1f} s: {rate:.2f} (image, phrase)/s; read with "
            f"pandas.read_parquet({str(out / 'parts')!r})")

