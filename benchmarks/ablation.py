"""Read-out ablation on held-out phantoms: the paper preset, each read-out option alone, the recommended preset, fast
and g2g, for each shipped toy, with UNet evaluations and seconds per phrase. Writes docs/ablation.md's tables.

    OMP_NUM_THREADS=1 python benchmarks/ablation.py --seeds 123456789 987654 --n 40 --out docs/ablation-results.json

Every row is one ``medground toy eval --model M --seed S --n N --methods ldm --preset P [--set K=V ...]`` (the same
call, ``evaluate_toy``); the command of each row is printed beside it. Seeds must stay away from the training seeds
(0..200000) and the validation seeds the presets were chosen on (5000000..5000199).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medground import Grounder, load_model
from medground.errors import ConfigError
from medground.toy.evaluate import evaluate_toy


def recipes(model: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, preset, overrides): each option alone on top of ``paper``, then the presets."""
    length = Grounder(model).config.window[1] - Grounder(model).config.window[0]
    ramp = [round(1.0 + i / (length - 1), 4) for i in range(length)]
    return [
        ("paper", "paper", {}),
        ("threshold gmm", "paper", {"threshold": "gmm"}),
        ("threshold none", "paper", {"threshold": "none"}),
        ("self-attention refinement k=1", "paper", {"self_attention_power": 1}),
        ("tokens: content words", "paper", {"token_rule": "content_words"}),
        ("tokens: last", "paper", {"token_rule": "last"}),
        ("layer weights by resolution (16x16 twice 8x8)", "paper", {"layer_weights": "by_resolution"}),
        ("step weights: ramp 1 -> 2 (noisier steps more)", "paper", {"step_weights": ramp}),
        ("no per-map normalisation", "paper", {"normalise_each_map": False}),
        ("recommended (by-resolution layer weights + no per-map normalisation)", "recommended", {}),
        ("fast", "fast", {}),
        ("g2g", "g2g", {}),
    ]


def command(model: str, seed: int, n: int, preset: str, overrides: dict[str, Any]) -> str:
    sets = "".join(f" --set {key}={value if isinstance(value, str) else json.dumps(value).replace(' ', '')}"
                   for key, value in overrides.items())
    return f"medground toy eval --model {model} --seed {seed} --n {n} --methods ldm --preset {preset}{sets}"


def pooled(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The seeds together: metrics weighted by phrases, discrimination by pairs, speed by phrases."""
    phrases = sum(r["n_phrases"] for r in rows)
    out = {key: sum(r[key] * r["n_phrases"] for r in rows) / phrases
           for key in ("miou", "auroc", "auroc_exact", "cnr", "unet_evaluations_per_phrase", "seconds_per_phrase")}
    pairs = sum(r["pairs"] for r in rows)
    out["discrimination"] = sum(r["discrimination"] * r["pairs"] for r in rows) / pairs
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        seeds = list(dict.fromkeys(r["seed"] for r in mine))
        ranges = ", ".join(f"{s}..{s + mine[0]['n'] - 1}" for s in seeds)
        lines += [f"### {model}", "", f"Seeds {ranges} "
                  f"({sum(r['n_phrases'] for r in mine if r['label'] == 'paper')} phrases); pooled over the seeds, "
                  "then per seed.", "",
                  "| recipe | mIoU | AUROC (binned) | AUROC (exact) | CNR | discrimination | "
                  + " | ".join(f"AUROC / disc. seed {s}" for s in seeds) + " | UNet evals / phrase | s / phrase |",
                  "|---|---|---|---|---|---|" + "---|" * len(seeds) + "---|---|"]
        for label in dict.fromkeys(r["label"] for r in mine):
            runs = [r for r in mine if r["label"] == label]
            if any("error" in r for r in runs):
                lines.append(f"| {label} | not servable: {runs[0]['error']} |")
                continue
            m = pooled(runs)
            per_seed = " | ".join(f"{r['auroc']:.3f} / {r['discrimination']:.2f}" for r in runs)
            lines.append(f"| {label} | {m['miou']:.3f} | {m['auroc']:.3f} | {m['auroc_exact']:.3f} | {m['cnr']:.2f} | "
                         f"{m['discrimination']:.2f} | {per_seed} | {m['unet_evaluations_per_phrase']:.0f} | "
                         f"{m['seconds_per_phrase']:.2f} |")
        lines += ["", "Commands (one per seed):", "", "```"]
        lines += [r["command"] for r in mine]
        lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["toy", "toy-sd"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[123456789, 987654])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", type=Path, required=True, help="JSON results (rows are kept, a rerun resumes)")
    parser.add_argument("--table", action="store_true", help="print the markdown tables of --out and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {(r["model"], r["seed"], r["label"]) for r in rows}
    for name in args.models:
        model = load_model(name)
        for label, preset, overrides in recipes(model):
            for seed in args.seeds:
                if (name, seed, label) in done:
                    continue
                row = {"model": name, "seed": seed, "n": args.n, "label": label,
                       "command": command(name, seed, args.n, preset, overrides)}
                try:
                    report = evaluate_toy(model, seed, args.n, methods=("ldm",), preset=preset, overrides=overrides)
                    row.update(report["methods"]["ldm"], n_phrases=report["n_phrases"])
                except ConfigError as exc:
                    row["error"] = str(exc)
                rows.append(row)
                args.out.write_text(json.dumps(rows, indent=2) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
