"""Held-out evaluation on phantoms: a thin call of the common harness (phantoms dataset, method registry).

The table reports means over phrases (``pooled``) and phrase discrimination: on images with two findings of
different kinds, the fraction of phrases whose map is higher inside its own box than inside the other's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from medground.datasets import load_dataset
from medground.evaluate.report import summarise
from medground.evaluate.runner import MemoryStore, evaluate
from medground.methods import MethodOptions, make_method

TOY_METHODS = ("ldm", "uniform", "centre", "prior", "untrained")
TABLE_METRICS = ("miou", "auroc", "auroc_exact", "cnr")


def evaluate_toy(model: Any, seed: int, n: int, methods: Sequence[str] = TOY_METHODS, preset: str = "paper",
                 overrides: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Ground every finding phrase of phantoms ``seed .. seed + n - 1`` with each method and score them.

    ``model``: a loaded model or a name/path; ``preset`` and ``overrides`` apply to ``ldm`` and ``untrained``.
    """
    load = load_dataset("phantoms", seed=seed, n=n)
    report: dict[str, Any] = {"seed": seed, "n_images": n, "n_phrases": len(load.samples), "methods": {}}
    options = MethodOptions(model=model, preset=preset, overrides=dict(overrides or {}), device=device,
                            batch_size=16)
    for name in methods:
        method = make_method(name, options)
        started = time.perf_counter()
        records = evaluate(load, method, MemoryStore(), images_per_group=16, progress=False)
        seconds = time.perf_counter() - started
        summary = summarise(records)
        grounder = getattr(method, "grounder", None)
        report["methods"][name] = {
            **{metric: summary["pooled"][metric]["mean"] for metric in TABLE_METRICS},
            "discrimination": summary["discrimination"], "pairs": summary["discrimination_samples"] // 2,
            "n_flat": summary["n_flat"], "seconds_per_phrase": seconds / len(load.samples),
            "unet_evaluations_per_phrase": sum(grounder.unet_evaluations.values()) / len(load.samples)
            if grounder else 0.0}
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"toy evaluation: seeds {report['seed']}..{report['seed'] + report['n_images'] - 1}, "
             f"{report['n_phrases']} phrases",
             "| method | mIoU | AUROC (binned) | AUROC (exact) | CNR | discrimination | UNet evals / phrase "
             "| s / phrase |", "|---|---|---|---|---|---|---|---|"]
    for method, m in report["methods"].items():
        discrimination = "n/a" if m["discrimination"] is None else f"{m['discrimination']:.2f}"
        lines.append(f"| {method} | {m['miou']:.3f} | {m['auroc']:.3f} | {m['auroc_exact']:.3f} | {m['cnr']:.2f} "
                     f"| {discrimination} | {m['unet_evaluations_per_phrase']:.0f} | {m['seconds_per_phrase']:.2f} |")
    return "\n".join(lines)
