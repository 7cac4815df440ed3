"""From per-sample records to tables: per-class summaries in the paper's form, contact sheets, run comparisons.

The headline (``overall``) is the unweighted mean of the class means +- the std across class means, as the paper
reports; ``pooled`` is the plain mean over samples (the toy tables use it). Discrimination is the mean, over samples
whose image carries findings of another category, of whether the map is higher inside the sample's own boxes than
inside the other finding's boxes. ``n_flat`` counts samples whose map was flat (all zero: it located nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medground.errors import RunDirError

METRICS = ("cnr", "cnr_signed", "miou", "auroc", "auroc_exact")


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per class mean/std (population) of each metric; headline = unweighted mean of class means +- their std."""
    if not records:
        return {"n_samples": 0, "classes": {}, "overall": {}, "pooled": {}, "discrimination": None, "n_flat": 0}
    by_class: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_class.setdefault(record["category"], []).append(record)
    classes = {category: {"n": len(rows), **{m: _stats([r[m] for r in rows]) for m in METRICS}}
               for category, rows in sorted(by_class.items())}
    overall = {m: _stats([c[m]["mean"] for c in classes.values()]) for m in METRICS}
    pooled = {m: _stats([r[m] for r in records]) for m in METRICS}
    wins = [r["discrimination"] for r in records if r.get("discrimination") is not None]
    return {"n_samples": len(records), "classes": classes, "overall": overall, "pooled": pooled,
            "discrimination": float(np.mean(wins)) if wins else None, "discrimination_samples": len(wins),
            "n_flat": sum(bool(r.get("flat")) for r in records)}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table, per class and the mean of classes (``summary.md``)."""
    lines = ["| class | n | \\|CNR\\| | CNR (signed) | mIoU | AUROC (binned) | AUROC (exact) |",
             "|---|---|---|---|---|---|---|"]
    rows = [*summary["classes"].items(), ("**mean of classes**", {**summary["overall"], "n": summary["n_samples"]})]
    for name, values in rows:
        cells = " | ".join(f"{values[m]['mean']:.3f} ± {values[m]['std']:.3f}" for m in METRICS)
        lines.append(f"| {name} | {values['n']} | {cells} |")
    discrimination = summary.get("discrimination")
    if discrimination is not None:
        lines.append(f"\nDiscrimination: {discrimination:.3f} over {summary['discrimination_samples']} samples whose "
                     "image has a finding of another class.")
    lines.append(f"\nSkipped samples (no box inside the crop): {summary.get('skipped_samples', 0)}; "
                 f"dropped boxes: {summary.get('dropped_boxes', 0)}; flat maps (located nothing): "
                 f"{summary.get('n_flat', 0)}.")
    return "\n".join(lines)


def summary_csv(summary: dict[str, Any]) -> str:
    """The summary as CSV, per class and the mean of classes (``summary.csv``, for spreadsheets)."""
    header = "class,n," + ",".join(f"{m}_mean,{m}_std" for m in METRICS)
    rows = [header]
    for name, values in [*summary["classes"].items(), ("ALL (mean of classes)",
                                                       {**summary["overall"], "n": summary["n_samples"]})]:
        rows.append(f"{name},{values['n']}," + ",".join(f"{values[m]['mean']:.6f},{values[m]['std']:.6f}"
                                                        for m in METRICS))
    return "\n".join(rows) + "\n"


def contact_sheet(samples: dict[str, Any], records: Sequence[dict[str, Any]], previews: Path,
                  count: int = 4) -> bytes:
    """Best and worst samples by mIoU (image, preview heatmap and truth boxes), as PNG bytes.

    Args:
        samples: the run's samples by id; their images are read again, at the previews' stride.
        records: the scored records.
        previews: the folder of preview maps (``RunWriter.save_preview``).
        count: how many best and how many worst samples.
    """
    from medground.evaluate.store import preview_step
    from medground.images import read_image
    from medground.viz import contact_sheet_png

    ranked = sorted(records, key=lambda r: (-r["miou"], r["id"]))
    best = ranked[:count]
    chosen = [("best", r) for r in best] + [("worst", r) for r in ranked[::-1][:count] if r not in best]
    panels = []
    for label, record in chosen:
        sample = samples[record["id"]]
        heatmap = np.load(previews / f"{sample.id}.npy").astype(np.float32)
        step = preview_step(sample.height, sample.width)
        image = read_image(sample.image)[::step, ::step]
        boxes = [(x / step, y / step, w / step, h / step) for x, y, w, h in sample.boxes]
        panels.append({"image": image, "heatmap": heatmap, "truth": boxes,
                       "title": f"{label}: {sample.phrase[:40]}\nmIoU {record['miou']:.2f} CNR {record['cnr']:.2f}"})
    return contact_sheet_png(panels)


def compare_runs(run_dirs: Sequence[Path]) -> str:
    """Side-by-side per-class table of several runs, with paired differences to the first on shared samples."""
    from medground.evaluate.store import read_run

    if not run_dirs:
        raise RunDirError("name at least one run folder")
    runs = []
    for run_dir in run_dirs:
        settings, records = read_run(Path(run_dir))
        runs.append((f"{settings['method']}@{Path(run_dir).name}", {r["id"]: r for r in records}))
    shared = set(runs[0][1]).intersection(*(set(r) for _, r in runs[1:]))
    if not shared:
        raise RunDirError("the runs share no samples")
    for (name, records), run_dir in zip(runs, run_dirs):
        missing = sorted({m for i in shared for m in (*METRICS, "category", "truth") if m not in records[i]})
        if missing:
            raise RunDirError(f"the records of {name} ({run_dir}) lack {missing}: written by another (older) "
                              "medground; evaluate again into a new folder to compare it")
    for name, records in runs[1:]:  # paired differences are only about the methods if the boxes are the same
        differ = sorted(i for i in shared if records[i]["truth"] != runs[0][1][i]["truth"])
        if differ:
            raise RunDirError(f"{name} and {runs[0][0]} scored {len(differ)} shared sample(s) against different ground "
                              f"truth (class, image size or boxes), e.g. {differ[0]}; compare runs on one dataset")
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
