"""Choose a toy model's checkpoint and its grounding defaults on validation phantoms, and write it.

``python -m medground.toy.ship --checkpoints RUN/checkpoints --out src/medground/toy/model[-sd]``

First the checkpoint (among the last ``--last`` ones) with the base read-out, then the read-out (cross-attention
layers by grid resolution, window, smoothing) on that checkpoint, both by a validation score over
``VALIDATION_SEEDS``, never on evaluation seeds: ``auroc_exact + miou + 0.1 * cnr + discrimination`` (the ``toy``
shipped before discrimination was added to it and records ``auroc_exact + miou + 0.1 * cnr``: its maps separated
phrases well at every candidate, the diffusers toy's did not). The loss is not used: it flattens long before
grounding is good. Works for either family: the layer sets come from the model's own grid sides.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from medground.backbones.model_dir import MODEL_FILE
from medground.datasets.phantoms import VALIDATION_SEEDS
from medground.evaluate.sweep import RANK_SCORE, score
from medground.loading import load_model
from medground.toy.evaluate import evaluate_toy

WINDOWS = [(10, 40), (0, 20), (10, 30), (20, 40), (60, 80), (10, 80), (30, 80)]
"""Windows of the 100-step trailing grid the toys use (positions 10..39 cover t = 109..399)."""


def candidates(model: Any) -> list[dict[str, Any]]:
    """All layers, the coarsest-grid layers and the finest-grid layers; then windows and smoothing."""
    sides = model.attention_grid_sides()
    every = list(sides)
    coarse = [p for p, s in sides.items() if s == min(sides.values())]
    fine = [p for p, s in sides.items() if s == max(sides.values())]
    base = {"inference_steps": 100, "cross_attention_layers": every, "gaussian_sigma": 1.0,
            "window_start": WINDOWS[0][0], "window_stop": WINDOWS[0][1]}
    found = [base, {**base, "cross_attention_layers": coarse}, {**base, "cross_attention_layers": fine}]
    found += [{**base, "window_start": a, "window_stop": b} for a, b in WINDOWS[1:]]
    found += [{**base, "gaussian_sigma": sigma} for sigma in (0.0, 2.0)]
    return [c for i, c in enumerate(found) if c not in found[:i]]


SHIP_SCORE = f"{RANK_SCORE} + discrimination"


def ship_score(metrics: dict[str, Any]) -> float:
    """``SHIP_SCORE`` of a candidate: the sweep's rank score plus discrimination (0 where there is none)."""
    return score(metrics) + (metrics["discrimination"] or 0.0)


def evaluate_candidate(model: Any, defaults: dict[str, Any], n: int) -> dict[str, Any]:
    """The ``ldm`` metrics of ``model`` with read-out ``defaults`` on validation phantoms (never evaluation seeds).

    Args:
        model: the loaded checkpoint.
        defaults: the grounding defaults to try (a ``candidates`` entry), applied over the ``paper`` preset.
        n: validation phantoms, from ``VALIDATION_SEEDS.start``.
    """
    return evaluate_toy(model, VALIDATION_SEEDS.start, n, methods=("ldm",), overrides=defaults)["methods"]["ldm"]


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python -m medground.toy.ship`` (``--help`` lists the flags)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=40, help="validation phantoms per candidate")
    parser.add_argument("--last", type=int, default=3, help="how many of the latest checkpoints to consider")
    args = parser.parse_args(argv)
    checkpoints = sorted(args.checkpoints.glob("step_*"))[-args.last :]
    trials = []
    for checkpoint in checkpoints:
        model = load_model(checkpoint)
        base = candidates(model)[0]
        trials.append({"checkpoint": checkpoint.name, "defaults": base, **evaluate_candidate(model, base, args.n)})
        print(json.dumps(trials[-1]), flush=True)
    best_checkpoint = max(trials, key=ship_score)["checkpoint"]
    model = load_model(args.checkpoints / best_checkpoint)
    for defaults in candidates(model)[1:]:
        trials.append({"checkpoint": best_checkpoint, "defaults": defaults,
                       **evaluate_candidate(model, defaults, args.n)})
        print(json.dumps(trials[-1]), flush=True)
    best = max((t for t in trials if t["checkpoint"] == best_checkpoint), key=ship_score)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.checkpoints / best_checkpoint, args.out)
    spec = json.loads((args.out / MODEL_FILE).read_text())
    spec["grounding_defaults"] = best["defaults"]
    spec["selection"] = {"validation_seeds": [VALIDATION_SEEDS.start, VALIDATION_SEEDS.start + args.n],
                         "score": SHIP_SCORE, "chosen": best, "trials": trials}
    (args.out / MODEL_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    print(f"shipped {best_checkpoint} with defaults {best['defaults']} to {args.out}")


if __name__ == "__main__":
    main()
