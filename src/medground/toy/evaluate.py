"""Held-out evaluation on phantoms: a thin call of the common harness (phantoms dataset, method registry).

The table reports means over phrases (``pooled``) and phrase discrimination: on images with two findings of
different kinds, the fraction of phrases whose map is higher inside its own box than inside the other's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from medground.datasets import load_dataset
from medground.datasets.phantoms import TRAINING_SEEDS, VALIDATION_SEEDS
from medground.engine.cost import WorkEstimate, estimate
from medground.evaluate.report import summarise
from medground.evaluate.runner import MemoryStore, evaluate
from medground.methods import MODEL_METHODS, MethodOptions, make_method
from medground.toy import TOY_METHODS

TABLE_METRICS = ("miou", "auroc", "auroc_exact", "cnr")


def held_out_warning(seed: int, n: int) -> str | None:
    """What to say when seeds ``seed .. seed + n - 1`` overlap the seeds the toys were trained or chosen on."""
    seeds = range(seed, seed + n)
    for name, used in (("training", TRAINING_SEEDS), ("validation", VALIDATION_SEEDS)):
        if seeds.start < used.stop and used.start < seeds.stop:
            return (f"seeds {seeds.start}..{seeds.stop - 1} overlap the {name} seeds {used.start}..{used.stop - 1}; "
                    "this is not a held-out evaluation")
    return None


def evaluate_toy(model: Any, seed: int, n: int, methods: Sequence[str] = TOY_METHODS, preset: str = "paper",
                 overrides: dict[str, Any] | None = None, device: str = "cpu",
                 on_estimate: Callable[[WorkEstimate], None] | None = None) -> dict[str, Any]:
    """Ground every finding phrase of phantoms ``seed .. seed + n - 1`` with each method and score them.

    Args:
        model: a loaded model, or a name or folder.
        seed: the first phantom seed (keep clear of the training and validation seeds: ``held_out_warning``).
        n: how many phantoms.
        methods: keys of ``TOY_METHODS``.
        preset: the recipe of ``ldm`` and ``untrained``.
        overrides: settings on top of it; preset and overrides are resolved against the model once.
        device: where a model named by ``model`` is loaded.
        on_estimate: called with the work of the model methods before any runs (the command line prints it and
            refuses a long table without ``--yes``).
    """
    from medground.backbones.base import Backbone
    from medground.grounder import resolve_config
    from medground.loading import load_model

    load = load_dataset("phantoms", seed=seed, n=n)
    report: dict[str, Any] = {"seed": seed, "n_images": n, "n_phrases": len(load.samples), "methods": {}}
    if not isinstance(model, Backbone):
        model = load_model(model, device=device)
    options = MethodOptions(model=model, config=resolve_config(model, preset, overrides), batch_size=16)
    runs = sum(name in MODEL_METHODS for name in methods)
    if on_estimate is not None and runs:
        images = len({sample.image_key for sample in load.samples})
        work = estimate(model, options.config, images, len(load.samples))
        on_estimate(WorkEstimate(runs * work.unet_evaluations, runs * work.seconds))
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
    """``evaluate_toy``'s report as the Markdown table ``medground toy eval`` prints."""
    lines = [f"toy evaluation: seeds {report['seed']}..{report['seed'] + report['n_images'] - 1}, "
             f"{report['n_phrases']} phrases",
             "| method | mIoU | AUROC (binned) | AUROC (exact) | CNR | discrimination | UNet evals / phrase "
             "| s / phrase |", "|---|---|---|---|---|---|---|---|"]
    for method, m in report["methods"].items():
        discrimination = "n/a" if m["discrimination"] is None else f"{m['discrimination']:.2f}"
        lines.append(f"| {method} | {m['miou']:.3f} | {m['auroc']:.3f} | {m['auroc_exact']:.3f} | {m['cnr']:.2f} "
                     f"| {discrimination} | {m['unet_evaluations_per_phrase']:.0f} | {m['seconds_per_phrase']:.2f} |")
    return "\n".join(lines)
