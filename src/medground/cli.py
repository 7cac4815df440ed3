"""Command line: ``medground ground | convert-monai-ldm | eval | compare | models | demo | toy eval``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from medground.config import PRESETS
from medground.datasets.base import DATASETS
from medground.errors import MedgroundError
from medground.grounder import PRECISIONS
from medground.methods import METHOD_NAMES
from medground.toy.evaluate import METHODS as TOY_METHODS

PRECISION_HELP = "method ldm: fp32 (exact, default) or on CUDA tf32, bf16, fp16 (faster, not exact)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "phrase"


def cmd_ground(args: argparse.Namespace) -> int:
    from medground.grounder import Grounder
    from medground.images import read_image
    from medground.models.ldm import load_model
    from medground.viz import save_overlay

    model = load_model(args.model, device=args.device, text_encoder=args.text_encoder)
    grounder = Grounder(model, args.preset, progress=True, precision=args.precision)
    pixels = read_image(args.image)
    results = grounder.ground(pixels, args.phrases)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    for result in results:
        base = args.out / f"{stem}_{_slug(result.phrase)}"
        np.save(base.with_suffix(".npy"), result.heatmap)
        save_overlay(base.with_suffix(".png"), pixels, result.heatmap, result.phrase, result.boxes)
        record = {"image": str(args.image), "model": str(args.model), "preset": args.preset, **result.to_json()}
        base.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        top = result.boxes[0] if result.boxes else None
        where = f"top box x={top.x} y={top.y} w={top.w} h={top.h} score={top.score:.2f}" if top else "no region"
        print(f"{result.phrase!r}: {where} -> {base}.{{npy,png,json}}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from medground.models.monai_ldm import convert_monai_ldm

    out = convert_monai_ldm(args.autoencoder, args.unet, args.text_encoder, args.out)
    print(f"wrote {out} (load it with medground.load_model({str(out)!r}) or --model {out})")
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from medground.models.registry import KNOWN_MODELS

    for name, path in KNOWN_MODELS.items():
        state = "present" if (path / "model.json").is_file() else "missing"
        print(f"{name}\t{path}\t{state}")
    return 0


def cmd_toy_eval(args: argparse.Namespace) -> int:
    from medground.models.ldm import load_model
    from medground.toy.evaluate import evaluate_toy, format_table

    model = load_model(args.model, device=args.device)
    report = evaluate_toy(model, args.seed, args.n, methods=args.methods)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medground.grounder import Grounder
    from medground.models.ldm import load_model
    from medground.toy.evaluate import evaluate_toy, format_table
    from medground.toy.phantoms import generate_phantom
    from medground.viz import save_contact_sheet, save_overlay

    model = load_model(args.model, device=args.device)
    grounder = Grounder(model)
    phantoms = [p for p in (generate_phantom(args.seed + i) for i in range(3 * args.n)) if p.findings][: args.n]
    args.out.mkdir(parents=True, exist_ok=True)
    results = grounder.ground_many([(p.image, [f.phrase for f in p.findings]) for p in phantoms])
    panels = []
    for phantom, phantom_results in zip(phantoms, results):
        for finding, result in zip(phantom.findings, phantom_results):
            name = f"phantom{phantom.seed}_{_slug(finding.phrase)}"
            save_overlay(args.out / f"{name}.png", phantom.image, result.heatmap, finding.phrase, result.boxes,
                         [finding.box])
            np.save(args.out / f"{name}.npy", result.heatmap)
            panels.append({"image": phantom.image, "heatmap": result.heatmap, "title": finding.phrase,
                           "predicted": result.boxes, "truth": [finding.box]})
    sheet = save_contact_sheet(args.out / "contact_sheet.png", panels)
    print(f"grounded {len(panels)} phrases on {len(phantoms)} phantoms with model {model.name!r}; "
          f"overlays in {args.out} (green: truth box, red dashed: predicted, colour: heatmap); sheet: {sheet}")
    report = evaluate_toy(model, args.seed, args.n_eval, methods=("ldm", "uniform", "centre", "prior"))
    print(format_table(report))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from medground.datasets import load_dataset
    from medground.evaluate import run_evaluation, summary_markdown
    from medground.methods import make_method

    load = load_dataset(args.dataset, args.root, args.csv)
    if args.limit:
        load.samples = load.samples[: args.limit]
    print(f"{args.dataset}: {len(load.samples)} samples; skipped {len(load.skipped_samples)} with no box inside the "
          f"crop; dropped {load.dropped_boxes} boxes outside it", file=sys.stderr)
    method = make_method(args.method, args.model, args.preset, args.device, args.text_encoder, args.precision)
    settings = {"root": str(args.root), "csv": str(args.csv) if args.csv else None, "model": args.model,
                "preset": args.preset if args.method == "ldm" else None,
                "precision": args.precision if args.method == "ldm" else None, "limit": args.limit}
    summary = run_evaluation(load, method, args.out, settings, resume=args.resume)
    print(summary_markdown(summary))
    print(f"per-sample results: {args.out / 'samples.jsonl'}; summaries: {args.out}/summary.{{json,md,csv}}; "
          f"contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from medground.evaluate import compare_runs

    print(compare_runs(args.runs))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medground",
        description="Zero-shot phrase grounding in chest X-rays from a frozen latent diffusion model's "
        "cross-attention during DDIM inversion (Vilouras et al., arXiv 2404.12920).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ground = commands.add_parser("ground", help="ground phrases in one image and write heatmaps, overlays, JSON",
                                 description="Ground each PHRASE in IMAGE. Per phrase writes to --out: the "
                                 "original-size heatmap (.npy, NaN outside the model's centre crop), an overlay "
                                 "(.png) and a JSON with boxes, scores, timings and the config used.")
    ground.add_argument("image", type=Path, help="PNG, JPEG or DICOM radiograph")
    ground.add_argument("phrases", nargs="+", metavar="PHRASE", help="one or more report phrases")
    ground.add_argument("--model", default="toy", help="model directory or known name (default: toy)")
    ground.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="grounding recipe")
    ground.add_argument("--text-encoder", default=None,
                        help="override the text encoder source: local folder or hub-id[@revision]")
    ground.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ground.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help=PRECISION_HELP)
    ground.add_argument("--out", type=Path, required=True, help="output folder")
    ground.set_defaults(func=cmd_ground)

    convert = commands.add_parser(
        "convert-monai-ldm", help="convert the paper's published MONAI checkpoints into a model directory",
        description="Load autoencoder.pth and diffusion_model.pth (old 'generative' package format, from the "
        "MONAI bundle cxr_image_synthesis_latent_diffusion_model) through MONAI's load_old_state_dict with "
        "strict checks, record their SHA-256, and write a medground model directory.")
    convert.add_argument("--autoencoder", type=Path, required=True, help="path to autoencoder.pth")
    convert.add_argument("--unet", type=Path, required=True, help="path to diffusion_model.pth")
    convert.add_argument("--text-encoder", required=True,
                         help="SD-2.1-base style folder (text_encoder/ + tokenizer/) or hub-id[@revision]")
    convert.add_argument("--out", type=Path, required=True, help="output model directory")
    convert.set_defaults(func=cmd_convert)

    evaluate = commands.add_parser(
        "eval", help="evaluate a method on a dataset (resumable) and write paper-style tables",
        description="Run METHOD over every sample of a dataset. RUN_DIR/samples.jsonl gets one line per sample as "
        "it goes (use --resume after an interruption); then summary.json/.md/.csv (per class mean and std, and "
        "the paper's headline: the unweighted mean over classes +- std across classes) and contact_sheet.png.")
    evaluate.add_argument("--dataset", required=True, choices=list(DATASETS))
    evaluate.add_argument("--root", type=Path, required=True, help="image root (MIMIC-CXR-JPG for ms-cxr)")
    evaluate.add_argument("--csv", type=Path, default=None, help="annotation CSV (default: looked up in --root)")
    evaluate.add_argument("--method", required=True, choices=list(METHOD_NAMES))
    evaluate.add_argument("--model", default=None,
                          help="method ldm: model directory or known name; biovil, biovil-t: hub-id[@revision] or "
                          "a local copy of the weights repository (default: the official one)")
    evaluate.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    evaluate.add_argument("--text-encoder", default=None, help="text encoder source override (method ldm)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help=PRECISION_HELP)
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N samples")
    evaluate.add_argument("--out", type=Path, required=True, help="run folder")
    evaluate.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    evaluate.set_defaults(func=cmd_eval)

    compare = commands.add_parser("compare", help="compare evaluation runs side by side",
                                  description="Per class and overall means of several runs on the samples they "
                                  "share, with paired differences to the first run.")
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    compare.set_defaults(func=cmd_compare)

    models = commands.add_parser("models", help="list the model names load_model knows")
    models.set_defaults(func=cmd_models)

    demo = commands.add_parser("demo", help="ground phantoms with the shipped toy model and print metrics",
                               description="Generate chest-X-ray phantoms, ground their finding phrases with the "
                               "embedded toy model, write overlays (image, truth box, heatmap, predicted box) and "
                               "a contact sheet, and print a metrics table against position-only baselines.")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--model", default="toy", help="model directory or known name (default: toy)")
    demo.add_argument("--seed", type=int, default=7_000_000, help="first phantom seed")
    demo.add_argument("--n", type=int, default=6, help="phantoms to draw (those with findings)")
    demo.add_argument("--n-eval", type=int, default=24, help="phantoms in the metrics table")
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(func=cmd_demo)

    toy = commands.add_parser("toy", help="the toy world: evaluate the shipped phantom model")
    toy_commands = toy.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    toy_eval = toy_commands.add_parser(
        "eval", help="ground held-out phantoms and compare with baselines",
        description="Ground every finding phrase of N phantoms generated from seeds S..S+N-1 and report mIoU, "
        "AUROC (binned and exact), CNR and phrase discrimination for the model and the baselines uniform, "
        "centre, prior (mean validation box mask) and untrained (random weights, same pipeline).")
    toy_eval.add_argument("--seed", type=int, required=True, help="first phantom seed (keep it far from 0..200000)")
    toy_eval.add_argument("--n", type=int, default=40, help="number of phantoms")
    toy_eval.add_argument("--json", action="store_true", help="print JSON instead of a table")
    toy_eval.add_argument("--model", default="toy", help="model directory or known name (default: toy)")
    toy_eval.add_argument("--methods", nargs="+", default=list(TOY_METHODS), choices=list(TOY_METHODS))
    toy_eval.add_argument("--device", default="cpu")
    toy_eval.set_defaults(func=cmd_toy_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # per-file load/save bars would drown our own output
    try:
        return args.func(args)
    except MedgroundError as exc:
        print(f"medground: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
