"""Run a method over a dataset: per-sample results appended as they come (resumable), then tables.

``RUN_DIR/samples.jsonl`` gets one line per sample (id, category, phrase, cnr, cnr_signed, miou, auroc,
auroc_exact, seconds), flushed as written; a killed run continues with ``resume=True`` without
recomputing or duplicating a sample. Summaries are computed from that file in dataset order, so an
interrupted-and-resumed run gives the same ``summary.json`` as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medground.datasets.base import DatasetLoad, Sample
from medground.errors import MedgroundError
from medground.methods import GroundingMethod
from medground.metrics import auroc, cnr, miou

METRICS = ("cnr", "cnr_signed", "miou", "auroc", "auroc_exact")
PREVIEW_SIDE = 160


class RunDirError(MedgroundError, ValueError):
    """A run folder that already holds another run, or a resume whose settings differ."""


def score(heatmap: np.ndarray, sample: Sample) -> dict[str, float]:
    boxes = list(sample.boxes)
    return {"cnr": cnr(heatmap, boxes), "cnr_signed": cnr(heatmap, boxes, signed=True), "miou": miou(heatmap, boxes),
            "auroc": auroc(heatmap, boxes), "auroc_exact": auroc(heatmap, boxes, bins=None)}


def read_records(path: Path) -> list[dict]:
    """Complete lines of a samples.jsonl; a torn last line (a crash mid-write) is cut off the file."""
    if not path.is_file():
        return []
    records, good_bytes = [], 0
    with path.open("rb") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return records


def run_evaluation(load: DatasetLoad, method: GroundingMethod, out_dir: Path, settings: dict, resume: bool = False,
                   images_per_batch: int = 4, progress: bool = True) -> dict:
    """Evaluate every sample of ``load`` not yet in ``out_dir/samples.jsonl``; then write the summaries."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_file, samples_file = out_dir / "run.json", out_dir / "samples.jsonl"
    run_record = {**settings, "dataset": load.name, "method": method.name, "n_samples": len(load.samples),
                  "skipped_samples": load.skipped_samples, "dropped_boxes": load.dropped_boxes}
    if run_file.is_file():
        previous = json.loads(run_file.read_text())
        if not resume:
            raise RunDirError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
        if previous != run_record:
            raise RunDirError(f"cannot resume {out_dir}: its run.json differs from these settings")
    run_file.write_text(json.dumps(run_record, indent=2) + "\n")
    done = {record["id"] for record in read_records(samples_file)}
    todo = [s for s in load.samples if s.id not in done]
    (out_dir / "previews").mkdir(exist_ok=True)
    with samples_file.open("a") as sink, tqdm(total=len(todo), desc=f"{method.name} on {load.name}",
                                              disable=not progress, unit="sample") as bar:
        for batch in _image_batches(todo, images_per_batch):
            started = time.perf_counter()
            heatmaps = method.heatmaps(batch)
            seconds = (time.perf_counter() - started) / len(batch)
            for sample, heatmap in zip(batch, heatmaps):
                np.save(out_dir / "previews" / f"{sample.id}.npy", _preview(heatmap))
                record = {"id": sample.id, "category": sample.category, "phrase": sample.phrase,
                          **score(heatmap, sample), "seconds": round(seconds, 4)}
                sink.write(json.dumps(record) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(1)
    return write_summaries(load, out_dir)


def _image_batches(samples: Sequence[Sample], images_per_batch: int) -> list[list[Sample]]:
    """Consecutive samples grouped so that a batch holds at most ``images_per_batch`` distinct images."""
    batches: list[list[Sample]] = []
    images: set[str] = set()
    for sample in samples:
        path = str(sample.image_path)
        if not batches or (path not in images and len(images) >= images_per_batch):
            batches.append([])
            images = set()
        batches[-1].append(sample)
        images.add(path)
    return batches


def _preview_step(height: int, width: int) -> int:
    """Pixel stride that brings the longer side to at most PREVIEW_SIDE."""
    return max(1, int(np.ceil(max(height, width) / PREVIEW_SIDE)))


def _preview(heatmap: np.ndarray) -> np.ndarray:
    step = _preview_step(*heatmap.shape)
    return heatmap[::step, ::step].astype(np.float16)


def summarise(records: Sequence[dict]) -> dict:
    """Per class mean/std (population) of each metric; headline = unweighted mean of class means +- their std."""
    by_class: dict[str, list[dict]] = {}
    for record in records:
        by_class.setdefault(record["category"], []).append(record)
    classes = {}
    for category in sorted(by_class):
        rows = by_class[category]
        classes[category] = {"n": len(rows), **{
            metric: {"mean": float(np.mean([r[metric] for r in rows])), "std": float(np.std([r[metric] for r in rows]))}
            for metric in METRICS}}
    headline = {metric: {"mean": float(np.mean([c[metric]["mean"] for c in classes.values()])),
                         "std": float(np.std([c[metric]["mean"] for c in classes.values()]))} for metric in METRICS}
    return {"n_samples": len(records), "classes": classes, "overall": headline}


def write_summaries(load: DatasetLoad, out_dir: Path) -> dict:
    records = {r["id"]: r for r in read_records(out_dir / "samples.jsonl")}
    ordered = [records[s.id] for s in load.samples if s.id in records]
    summary = {**summarise(ordered), "skipped_samples": len(load.skipped_samples), "dropped_boxes": load.dropped_boxes}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(summary) + "\n")
    (out_dir / "summary.csv").write_text(summary_csv(summary))
    if ordered:
        _contact_sheet(load, ordered, out_dir)
    return summary


def summary_markdown(summary: dict) -> str:
    lines = ["| class | n | \\|CNR\\| | CNR (signed) | mIoU | AUROC (binned) | AUROC (exact) |",
             "|---|---|---|---|---|---|---|"]
    rows = [*summary["classes"].items(), ("**mean of classes**", {**summary["overall"], "n": summary["n_samples"]})]
    for name, values in rows:
        cells = " | ".join(f"{values[m]['mean']:.3f} ± {values[m]['std']:.3f}" for m in METRICS)
        lines.append(f"| {name} | {values['n']} | {cells} |")
    lines.append(f"\nSkipped samples (no box inside the crop): {summary.get('skipped_samples', 0)}; "
                 f"dropped boxes: {summary.get('dropped_boxes', 0)}.")
    return "\n".join(lines)


def summary_csv(summary: dict) -> str:
    header = "class,n," + ",".join(f"{m}_mean,{m}_std" for m in METRICS)
    rows = [header]
    for name, values in [*summary["classes"].items(), ("ALL (mean of classes)",
                                                       {**summary["overall"], "n": summary["n_samples"]})]:
        rows.append(f"{name},{values['n']}," + ",".join(f"{values[m]['mean']:.6f},{values[m]['std']:.6f}"
                                                        for m in METRICS))
    return "\n".join(rows) + "\n"


def _contact_sheet(load: DatasetLoad, records: Sequence[dict], out_dir: Path, count: int = 4) -> None:
    from medground.images import read_image
    from medground.viz import save_contact_sheet

    by_id = {s.id: s for s in load.samples}
    ranked = sorted(records, key=lambda r: (-r["miou"], r["id"]))
    best = ranked[:count]
    chosen = [("best", r) for r in best] + [("worst", r) for r in ranked[::-1][:count] if r not in best]
    panels = []
    for label, record in chosen:
        sample = by_id[record["id"]]
        preview = np.load(out_dir / "previews" / f"{sample.id}.npy").astype(np.float32)
        step = _preview_step(sample.height, sample.width)
        image = read_image(sample.image_path)[::step, ::step]
        boxes = [(x / step, y / step, w / step, h / step) for x, y, w, h in sample.boxes]
        panels.append({"image": image, "heatmap": preview, "truth": boxes,
                       "title": f"{label}: {sample.phrase[:40]}\nmIoU {record['miou']:.2f} CNR {record['cnr']:.2f}"})
    save_contact_sheet(out_dir / "contact_sheet.png", panels)


def compare_runs(run_dirs: Sequence[Path]) -> str:
    """Side-by-side per-class table of several runs, with paired differences to the first on shared samples."""
    runs = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        settings = json.loads((run_dir / "run.json").read_text())
        records = {r["id"]: r for r in read_records(run_dir / "samples.jsonl")}
        runs.append((f"{settings['method']}@{run_dir.name}", records))
    shared = set(runs[0][1]).intersection(*(set(r) for _, r in runs[1:]))
    if not shared:
        raise RunDirError("the runs share no samples")
    summaries = [summarise([records[i] for i in sorted(shared)]) for _, records in runs]
    lines = [f"Compared on the {len(shared)} samples all runs share. Cells: mean (paired difference to the first run).",
             "", "| class | n | " + " | ".join(name for name, _ in runs) + " |",
             "|---|---|" + "---|" * len(runs)]
    for metric in ("miou", "auroc", "cnr"):
        lines.append(f"| **{metric}** | |" + " |" * len(runs))
        for category in [*summaries[0]["classes"], None]:
            cells = []
            for (_, records), summary in zip(runs, summaries):
                values = summary["overall"] if category is None else summary["classes"][category]
                ids = [i for i in sorted(shared) if category is None or records[i]["category"] == category]
                diff = np.mean([records[i][metric] - runs[0][1][i][metric] for i in ids])
                cells.append(f"{values[metric]['mean']:.3f} ({diff:+.3f})")
            n = len(shared) if category is None else summaries[0]["classes"][category]["n"]
            lines.append(f"| {category or 'mean of classes'} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
