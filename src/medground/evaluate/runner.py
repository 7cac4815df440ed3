"""Run a method over a dataset: score every sample, write records as groups finish, then the summaries.

Samples are cut into fixed groups before anything runs: samples of one image always fall in the same group, groups
hold at most ``images_per_group`` images, in dataset order. A method sees a whole group at once (the LDM batches its
inversions and phrases by group), and a group is recomputed whole when any of its samples is missing, though only
the missing records are written. So a map never depends on where a run was interrupted: ``resume`` gives the same
records, and the same ``summary.json``, as an uninterrupted run. Groups are scored in this process or, through an
executor (``medground.cluster``), on Ray workers that each build the method once; the records come back in group
order and this process alone writes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from medground.cluster import Executor, local_executor
from medground.datasets.base import DatasetLoad, Sample
from medground.evaluate.report import contact_sheet, summarise, summary_csv, summary_markdown
from medground.evaluate.store import RunWriter, preview
from medground.methods import MODEL_METHODS, MethodOptions
from medground.metrics import auroc, box_union_mask, cnr, miou
from medground.outputs import json_bytes


class GroundingMethod(Protocol):
    """What the harness needs of a method (``medground.methods``): a name and one heatmap per sample."""

    name: str

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """Original-size float maps (NaN where the method has no prediction), one per sample."""


def plan_groups(samples: Sequence[Sample], images_per_group: int) -> list[list[Sample]]:
    """Samples grouped by image (first-appearance order), at most ``images_per_group`` images per group."""
    by_image: dict[str, list[Sample]] = {}
    for sample in samples:
        by_image.setdefault(sample.image_key, []).append(sample)
    images = list(by_image.values())
    return [[s for image in images[i : i + images_per_group] for s in image]
            for i in range(0, len(images), images_per_group)]


def score(heatmap: np.ndarray, sample: Sample, others: Sequence[Sample]) -> dict[str, Any]:
    """The paper's metrics of one sample, whether its map is flat, and its discrimination against the other
    findings (of other categories) on the same image.

    Args:
        heatmap: the sample's (H, W) map in original pixels, NaN where the method has no prediction.
        sample: the sample, its boxes in the same pixels.
        others: the samples scored with it (its group); those on its image with another category are its rivals.
    """
    boxes = list(sample.boxes)
    record: dict[str, Any] = {
        "cnr": cnr(heatmap, boxes), "cnr_signed": cnr(heatmap, boxes, signed=True), "miou": miou(heatmap, boxes),
        "auroc": auroc(heatmap, boxes), "auroc_exact": auroc(heatmap, boxes, bins=None),
        "flat": not bool(np.nanmax(heatmap) > 0) if np.isfinite(heatmap).any() else True,
        "discrimination": None,
    }
    rivals = [o for o in others if o.image_key == sample.image_key and o.category != sample.category]
    if rivals:
        own = np.nanmean(heatmap[box_union_mask(heatmap.shape, boxes)])
        wins = [own > np.nanmean(heatmap[box_union_mask(heatmap.shape, list(o.boxes))]) for o in rivals]
        record["discrimination"] = float(np.mean(wins))
    return record


class MemoryStore:
    """A run kept in memory (for toy tables and sweeps that need no folder)."""

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []

    def records(self) -> list[dict[str, Any]]:
        """The records kept so far (a copy)."""
        return list(self._records)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Keep ``records`` (``RunWriter.append`` without the file)."""
        self._records.extend(records)

    def save_preview(self, sample_id: str, heatmap: np.ndarray) -> None:
        """Nothing: a run in memory makes no contact sheet."""
        pass


def score_group(method: GroundingMethod, group: Sequence[Sample], missing: Sequence[str]
                ) -> tuple[list[dict[str, Any]], list[tuple[str, np.ndarray]]]:
    """The records and preview maps of a group's ``missing`` samples (the whole group is computed: see above).

    Args:
        method: the grounding method.
        group: the samples of whole images (``plan_groups``), computed together.
        missing: ids of the samples whose records are wanted.

    Returns:
        The records (``seconds``: the group's time per sample) and (id, preview map) pairs.
    """
    started = time.perf_counter()
    heatmaps = dict(zip((s.id for s in group), method.heatmaps(group)))
    seconds = (time.perf_counter() - started) / len(group)
    wanted = set(missing)
    records, previews = [], []
    for sample in group:
        if sample.id in wanted:
            previews.append((sample.id, preview(heatmaps[sample.id])))
            records.append({"id": sample.id, "category": sample.category, "phrase": sample.phrase,
                            "truth": ground_truth_digest(sample),
                            **score(heatmaps[sample.id], sample, group), "seconds": round(seconds, 4)})
    return records, previews


def ground_truth_digest(sample: Sample) -> str:
    """Names what a sample was scored against (class, image size, boxes), so runs are only compared on equal
    ground truth."""
    text = json.dumps([sample.category, sample.width, sample.height, [[round(v, 3) for v in b] for b in sample.boxes]])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class GroupScoring:
    """The recipe a Ray worker builds its scorer from: the method is made (its model loaded) once per worker."""

    method: str
    options: MethodOptions

    def build(self) -> Any:
        """A worker's unit function (``cluster.Recipe``): the method made here, once, then ``score_group``."""
        from medground.methods import make_method

        method = make_method(self.method, self.options)
        return lambda item: score_group(method, *item)


def evaluate(load: DatasetLoad, method: GroundingMethod, store: RunWriter | MemoryStore, images_per_group: int = 4,
             progress: bool = True, executor: Executor | None = None) -> list[dict[str, Any]]:
    """Score every sample of ``load`` not yet in ``store``; returns all records in dataset order.

    Args:
        load: the dataset, crop-filtered.
        method: the grounding method (used here when ``executor`` is None).
        store: an open run folder's writer, or a MemoryStore.
        images_per_group: images per group: the grain of batching and of recomputation on resume.
        progress: show a progress bar.
        executor: where the groups are scored (``medground.cluster``); None: here, with ``method``.
    """
    done = {record["id"] for record in store.records()}
    groups = plan_groups(load.samples, images_per_group)
    todo = sum(s.id not in done for s in load.samples)
    pending = ((number, (group, [s.id for s in group if s.id not in done])) for number, group in enumerate(groups))
    run = executor or local_executor(lambda item: score_group(method, *item))
    written: set[int] = set()
    with tqdm(total=todo, desc=f"{method.name} on {load.name}", disable=not progress, unit="sample") as bar:
        for result in run((number, item) for number, item in pending if item[1]):
            if result.index in written:  # a retried group that arrived twice
                continue
            records, previews = result.result
            for sample_id, small in previews:
                store.save_preview(sample_id, small)
            store.append(records)
            written.add(result.index)
            bar.update(len(records))
    by_id = {record["id"]: record for record in store.records()}
    return [by_id[s.id] for s in load.samples if s.id in by_id]


def evaluation_record(load: DatasetLoad, method: str, options: MethodOptions, requested: dict[str, Any],
                      limit: int | None) -> dict[str, Any]:
    """What ``run.json`` records of an evaluation: the dataset as loaded, the method, and for a model method the
    model and recipe as asked (``requested``: model, preset, overrides) and the config they resolved to.

    Args:
        load: the dataset as loaded (its ``source`` says how to load it again).
        method: the method's name (``METHODS``).
        options: the method's options; a model method's ``config`` is the resolved one.
        requested: ``model``, ``preset`` and ``overrides`` as the user gave them.
        limit: ``--limit``, the number of samples evaluated, first ones first; None: all.
    """
    model_method = method in MODEL_METHODS
    source = load.source
    record = {"dataset": source.get("dataset", load.name), "root": source.get("root"), "csv": source.get("csv"),
              "method": method, "model": str(requested["model"]) if model_method else None,
              "preset": requested["preset"] if model_method else None,
              "overrides": requested["overrides"] if model_method else None,
              "precision": options.precision if model_method else None,
              "biovil_weights": options.biovil_weights if method.startswith("biovil") else None,
              "limit": limit, "seed": source.get("seed"), "n": source.get("n"), "n_samples": len(load.samples),
              "skipped_samples": load.skipped_samples, "dropped_boxes": load.dropped_boxes}
    if model_method:
        record["config"] = options.config.to_dict()
    return record


def run_evaluation(load: DatasetLoad, method: GroundingMethod, writer: RunWriter, run_record: dict[str, Any],
                   resume: bool = False, images_per_group: int = 4, progress: bool = True,
                   executor: Executor | None = None) -> dict[str, Any]:
    """Evaluate into a run folder (resumable, one writer), then write summary.json/.md/.csv and a contact sheet.

    Args:
        load: the dataset, crop-filtered.
        method: the grounding method.
        writer: the run folder's writer, not yet open.
        run_record: what ``run.json`` records (``evaluation_record``); a resumed run must record the same.
        resume: continue the run in the folder.
        images_per_group: as ``evaluate``.
        progress: show a progress bar.
        executor: as ``evaluate``.

    Returns:
        The summary (``report.summarise``) with the crop filter's counts.

    Raises:
        RunDirError: a folder that cannot be used (another run's, locked, corrupt) or written.
    """
    with writer.open(run_record, resume):
        records = evaluate(load, method, writer, images_per_group, progress, executor)
        summary = {**summarise(records), "skipped_samples": len(load.skipped_samples),
                   "dropped_boxes": load.dropped_boxes}
        writer.write("summary.json", json_bytes(summary))
        writer.write("summary.md", (summary_markdown(summary) + "\n").encode())
        writer.write("summary.csv", summary_csv(summary).encode())
        if records:
            writer.write("contact_sheet.png", contact_sheet({s.id: s for s in load.samples}, records,
                                                            writer.folder / "previews"))
    return summary
