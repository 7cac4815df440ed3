"""Choose the shipped toy model and its grounding defaults on validation phantoms, and write it.

``python -m medground.toy.ship --checkpoints RUN/checkpoints --out src/medground/toy/model``

First the checkpoint (among the last ``--last`` ones) with the default read-out, then the read-out
(cross-attention layers, window, smoothing) on that checkpoint, both by the validation score
``auroc_exact + miou + 0.1 * cnr`` over ``VALIDATION_SEEDS`` — never on evaluation seeds. The loss is not
used: it flattens long before grounding is good.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from medground.config import GroundingConfig
from medground.models.ldm import MODEL_FILE, load_model
from medground.toy.evaluate import VALIDATION_SEEDS, evaluate_toy

LOW_RES_LAYERS = (  # 8x8: the lowest resolution of the toy UNet
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2",
    "middle_block.attention.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
)
MID_RES_LAYERS = (  # 16x16
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
)
ALL_LAYERS = LOW_RES_LAYERS + MID_RES_LAYERS
BASE = {"inference_steps": 100, "cross_attention_layers": list(ALL_LAYERS), "gaussian_sigma": 1.0}
CANDIDATES = [
    BASE,
    {**BASE, "cross_attention_layers": list(LOW_RES_LAYERS)},
    {**BASE, "cross_attention_layers": list(MID_RES_LAYERS)},
    {**BASE, "window_start": 0, "window_stop": 20},
    {**BASE, "window_start": 10, "window_stop": 30},
    {**BASE, "window_start": 20, "window_stop": 40},
    {**BASE, "window_start": 10, "window_stop": 40, "gaussian_sigma": 2.0},
    {**BASE, "window_start": 60, "window_stop": 80},
    {**BASE, "gaussian_sigma": 2.0},
]


def validation_score(metrics: dict) -> float:
    return metrics["auroc_exact"] + metrics["miou"] + 0.1 * metrics["cnr"]


def evaluate_candidate(model_dir: Path, defaults: dict, n: int) -> dict:
    model = load_model(model_dir)
    config = GroundingConfig.from_dict(defaults)
    return evaluate_toy(model, VALIDATION_SEEDS.start, n, methods=("ldm",), config=config)["methods"]["ldm"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=40, help="validation phantoms per candidate")
    parser.add_argument("--last", type=int, default=3, help="how many of the latest checkpoints to consider")
    args = parser.parse_args(argv)
    checkpoints = sorted(args.checkpoints.glob("step_*"))[-args.last :]
    trials = []
    for checkpoint in checkpoints:
        metrics = evaluate_candidate(checkpoint, BASE, args.n)
        trials.append({"checkpoint": checkpoint.name, "defaults": BASE, **metrics})
        print(json.dumps(trials[-1]), flush=True)
    best_checkpoint = max((t for t in trials), key=validation_score)["checkpoint"]
    for defaults in CANDIDATES[1:]:
        metrics = evaluate_candidate(args.checkpoints / best_checkpoint, defaults, args.n)
        trials.append({"checkpoint": best_checkpoint, "defaults": defaults, **metrics})
        print(json.dumps(trials[-1]), flush=True)
    best = max((t for t in trials if t["checkpoint"] == best_checkpoint), key=validation_score)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.checkpoints / best_checkpoint, args.out)
    spec = json.loads((args.out / MODEL_FILE).read_text())
    spec["grounding_defaults"] = best["defaults"]
    spec["selection"] = {"validation_seeds": [VALIDATION_SEEDS.start, VALIDATION_SEEDS.start + args.n],
                         "score": "auroc_exact + miou + 0.1 * cnr", "chosen": best, "trials": trials}
    (args.out / MODEL_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    print(f"shipped {best_checkpoint} with defaults {best['defaults']} to {args.out}")


if __name__ == "__main__":
    main()
