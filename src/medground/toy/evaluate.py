"""Held-out evaluation of grounding on phantoms: the LDM against position-only baselines.

Methods: ``ldm`` (the model), ``uniform`` (every pixel 1), ``centre`` (isotropic Gaussian at the image
centre, sigma = a quarter of the side), ``prior`` (mean ground-truth box mask over the validation seed
range: the best a method can do from position statistics alone) and ``untrained`` (the same
architecture with random weights through the same pipeline). Phrase discrimination: on images with
two findings of different kinds, the fraction of phrases whose map is higher inside its own box than
inside the other finding's box.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medground.config import GroundingConfig
from medground.grounder import Grounder, resolve_config
from medground.methods import centre_gaussian
from medground.metrics import auroc, box_union_mask, cnr, miou
from medground.models.ldm import LatentDiffusionModel, load_model, save_model_dir
from medground.toy.phantoms import SIZE, Phantom, generate_phantom

VALIDATION_SEEDS = range(5_000_000, 5_000_200)
"""Seeds for choosing the shipped model's defaults and for the position prior; never for evaluation."""
METHODS = ("ldm", "uniform", "centre", "prior", "untrained")


def box_position_prior(seeds: Sequence[int] = VALIDATION_SEEDS) -> np.ndarray:
    total = np.zeros((SIZE, SIZE), dtype=np.float64)
    for seed in seeds:
        for finding in generate_phantom(seed).findings:
            total += box_union_mask((SIZE, SIZE), [finding.box])
    return (total / total.max()).astype(np.float32)


def untrained_model(like: LatentDiffusionModel, seed: int = 12345) -> LatentDiffusionModel:
    """The toy architecture with fresh random weights, loaded through the same loader."""
    from medground.toy.train import build_networks, model_spec

    with tempfile.TemporaryDirectory() as folder:
        tokenizer, text_encoder, unet = build_networks(Path(folder) / "tokenizer", seed)
        spec = model_spec({"grounding_defaults": like.grounding_defaults})
        model_dir = save_model_dir(Path(folder) / "model", spec, {"unet": unet}, text_encoder.eval(), tokenizer)
        return load_model(model_dir, device=like.device)


def ldm_maps(model: LatentDiffusionModel, config: GroundingConfig, phantoms: Sequence[Phantom],
             batch_size: int = 16) -> list[list[np.ndarray]]:
    """Final heatmaps per phantom and finding; images are inverted in batches, phrases batched per image."""
    grounder = Grounder(model, config)
    maps: list[list[np.ndarray]] = []
    for begin in range(0, len(phantoms), batch_size):
        chunk = phantoms[begin : begin + batch_size]
        results = grounder.ground_many([(p.image, [f.phrase for f in p.findings]) for p in chunk])
        maps.extend([r.heatmap for r in image_results] for image_results in results)
    return maps


def score_maps(phantoms: Sequence[Phantom], maps: Sequence[Sequence[np.ndarray]]) -> dict[str, float]:
    rows = []
    wins = []
    for phantom, phantom_maps in zip(phantoms, maps):
        for finding, heatmap in zip(phantom.findings, phantom_maps):
            boxes = [finding.box]
            rows.append((miou(heatmap, boxes), auroc(heatmap, boxes), auroc(heatmap, boxes, bins=None),
                         cnr(heatmap, boxes)))
        kinds = {f.kind for f in phantom.findings}
        if len(phantom.findings) == 2 and len(kinds) == 2:
            for own, other, heatmap in ((0, 1, phantom_maps[0]), (1, 0, phantom_maps[1])):
                inside_own = np.nanmean(heatmap[box_union_mask(heatmap.shape, [phantom.findings[own].box])])
                inside_other = np.nanmean(heatmap[box_union_mask(heatmap.shape, [phantom.findings[other].box])])
                wins.append(float(inside_own > inside_other))
    values = np.array(rows)
    return {"miou": float(values[:, 0].mean()), "auroc": float(values[:, 1].mean()),
            "auroc_exact": float(values[:, 2].mean()), "cnr": float(values[:, 3].mean()),
            "discrimination": float(np.mean(wins)) if wins else float("nan"), "pairs": len(wins) // 2}


def evaluate_toy(model: LatentDiffusionModel, seed: int, n: int, methods: Sequence[str] = METHODS,
                 config: GroundingConfig | str | None = None) -> dict:
    """Ground every finding phrase of phantoms ``seed .. seed + n - 1`` with each method and score them."""
    config = resolve_config(model, config)
    phantoms = [p for p in (generate_phantom(seed + i) for i in range(n)) if p.findings]
    fixed: dict[str, Callable[[], np.ndarray]] = {
        "uniform": lambda: np.ones((SIZE, SIZE), dtype=np.float32), "centre": lambda: centre_gaussian(SIZE, SIZE),
        "prior": box_position_prior,
    }
    report = {"seed": seed, "n_images": n, "n_phrases": sum(len(p.findings) for p in phantoms), "methods": {}}
    for method in methods:
        if method == "ldm":
            maps = ldm_maps(model, config, phantoms)
        elif method == "untrained":
            maps = ldm_maps(untrained_model(model), config, phantoms)
        elif method in fixed:
            heatmap = fixed[method]()
            maps = [[heatmap] * len(p.findings) for p in phantoms]
        else:
            raise ValueError(f"unknown method {method!r}; known: {METHODS}")
        report["methods"][method] = score_maps(phantoms, maps)
    return report


def format_table(report: dict) -> str:
    lines = [f"toy evaluation: seeds {report['seed']}..{report['seed'] + report['n_images'] - 1}, "
             f"{report['n_phrases']} phrases",
             "| method | mIoU | AUROC (binned) | AUROC (exact) | CNR | discrimination |",
             "|---|---|---|---|---|---|"]
    for method, m in report["methods"].items():
        lines.append(f"| {method} | {m['miou']:.3f} | {m['auroc']:.3f} | {m['auroc_exact']:.3f} | {m['cnr']:.2f} "
                     f"| {m['discrimination']:.2f} |")
    return "\n".join(lines)
