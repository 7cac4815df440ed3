"""Command line: ``medground COMMAND``; ``medground --help`` lists the commands, each has its own ``--help``.

Imports are lazy: building the parser (``medground --help``) loads no torch. Flags shared by the commands that run a
model live on parent parsers, so they read the same everywhere. Every failure medground anticipates is one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medground.config import PRECISIONS, PRESETS
from medground.datasets import DATASETS
from medground.errors import ConfigError, DatasetError, MedgroundError
from medground.methods import METHODS

PRECISION_HELP = "fp32 (exact, default) or on CUDA tf32, bf16, fp16 (faster, not exact)"
TOY_METHODS = ("ldm", "uniform", "centre", "prior", "untrained")


def int_at_least(minimum: int):
    """An argparse type for integers >= ``minimum`` (``--limit 0`` and ``--limit -1`` are refused, not guessed)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int, non_negative_int = int_at_least(1), int_at_least(0)


def _quiet_transformers() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # per-file load bars would drown our own output


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """``--config FILE`` then each ``--set key=value``, validated as a preset is."""
    from medground.config import GroundingConfig, parse_assignment, read_config_file

    values: dict[str, Any] = dict(read_config_file(args.config)) if getattr(args, "config", None) else {}
    for text in getattr(args, "set", None) or []:
        key, value = parse_assignment(text)
        values[key] = value
    GroundingConfig.from_dict(values, "--set/--config")
    return values


def cmd_ground(args: argparse.Namespace) -> int:
    import numpy as np

    from medground.backbones.model_dir import load_model
    from medground.evaluate.store import check_writable_folder
    from medground.grounder import Grounder
    from medground.images import read_image
    from medground.outputs import output_name, output_path
    from medground.text import phrase_tokens
    from medground.viz import save_overlay

    phrases = list(dict.fromkeys(args.phrases))
    if len(phrases) < len(args.phrases):
        print(f"note: {len(args.phrases) - len(phrases)} repeated phrase(s) grounded once", file=sys.stderr)
    pixels = read_image(args.image)
    check_writable_folder(args.out)
    _quiet_transformers()
    model = load_model(args.model, device=args.device, text_encoder=args.text_encoder)
    for phrase in phrases:
        phrase_tokens(model.tokenizer, phrase)
    grounder = Grounder(model, args.preset, overrides=overrides_of(args), progress=True, precision=args.precision)
    settings = json.dumps({"model": str(args.model), "config": grounder.config.to_dict()}, sort_keys=True)
    names = {phrase: output_name(args.image, phrase, settings) for phrase in phrases}
    targets = {phrase: {suffix: output_path(args.out, name + suffix) for suffix in (".npy", ".png", ".json")}
               for phrase, name in names.items()}
    for result in grounder.ground(pixels, phrases):
        target = targets[result.phrase]
        np.save(target[".npy"], result.heatmap)
        save_overlay(target[".png"], pixels, result.heatmap, result.phrase, result.boxes)
        record = {"image": str(args.image), "model": str(args.model), "preset": args.preset, **result.to_json()}
        target[".json"].write_text(json.dumps(record, indent=2) + "\n")
        top = result.boxes[0] if result.boxes else None
        if result.flat:
            where = "flat map: the attention did not vary over the image, so no region is located"
        else:
            where = f"top box x={top.x} y={top.y} w={top.w} h={top.h} score={top.score:.2f}" if top else "no region"
        print(f"{result.phrase!r}: {where} -> {args.out / names[result.phrase]}.{{npy,png,json}}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from medground.backbones.monai_convert import convert_monai_ldm

    _quiet_transformers()
    out = convert_monai_ldm(args.autoencoder, args.unet, args.text_encoder, args.out)
    print(f"wrote {out} (load it with medground.load_model({str(out)!r}) or --model {out})")
    return 0


def cmd_import_diffusers(args: argparse.Namespace) -> int:
    from medground.backbones.diffusers_import import import_diffusers

    _quiet_transformers()
    out = import_diffusers(args.source, args.out, unet=args.unet, text_encoder=args.text_encoder,
                           name=args.name, data_terms=args.data_terms)
    spec = json.loads((out / "model.json").read_text())
    print(f"wrote {out}: family diffusers, {spec['image_size']} px, {spec['noise_schedule']['prediction_type']}, "
          f"layers {spec['grounding_defaults']['cross_attention_layers']}")
    print(f"data terms: {spec['provenance']['data_terms']}")
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from medground.backbones.model_dir import KNOWN_MODELS, read_spec

    for name, path in KNOWN_MODELS.items():
        if (path / "model.json").is_file():
            spec = read_spec(path)
            print(f"{name}\t{spec['family']}\t{spec.get('image_size')} px\t{path}")
        else:
            print(f"{name}\t-\tmissing\t{path}")
    return 0


def cmd_toy_eval(args: argparse.Namespace) -> int:
    from medground.toy.evaluate import evaluate_toy, format_table
    from medground.toy.phantoms import TRAINING_SEEDS, VALIDATION_SEEDS

    seeds = range(args.seed, args.seed + args.n)
    for name, used in (("training", TRAINING_SEEDS), ("validation", VALIDATION_SEEDS)):
        if seeds.start < used.stop and used.start < seeds.stop:
            print(f"warning: seeds {seeds.start}..{seeds.stop - 1} overlap the {name} seeds {used.start}.."
                  f"{used.stop - 1}; this is not a held-out evaluation", file=sys.stderr)
    _quiet_transformers()
    report = evaluate_toy(args.model, args.seed, args.n, methods=args.methods, preset=args.preset,
                          overrides=overrides_of(args), device=args.device)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from medground.evaluate.store import check_writable_folder
    from medground.toy.demo import run_demo

    check_writable_folder(args.out)
    _quiet_transformers()
    report = run_demo(args.out, args.model, args.seed, args.n, args.n_eval, args.device)
    print(report["summary_line"])
    print(report["table"])
    return 0


def dataset_of(args: argparse.Namespace, default_seed: int) -> Any:
    """The dataset the flags name; flags that belong to another kind of dataset are refused, not ignored."""
    from medground.datasets import load_dataset

    if args.dataset == "phantoms":
        if args.root is not None or args.csv is not None:
            raise ConfigError("--dataset phantoms generates its images; --root and --csv are for file datasets")
        args.seed = default_seed if args.seed is None else args.seed
        args.n = 40 if args.n is None else args.n
        return load_dataset("phantoms", seed=args.seed, n=args.n)
    if args.seed is not None or args.n is not None:
        raise ConfigError(f"--seed and --n are for --dataset phantoms; to evaluate part of {args.dataset} use --limit")
    if args.root is None:
        raise ConfigError(f"--dataset {args.dataset} needs --root")
    return load_dataset(args.dataset, args.root, args.csv)


def cmd_eval(args: argparse.Namespace) -> int:
    from medground.evaluate.report import summary_markdown
    from medground.evaluate.runner import run_evaluation
    from medground.evaluate.store import RunWriter, check_writable_folder
    from medground.methods import MethodOptions, make_method

    load = dataset_of(args, default_seed=123456789)
    if args.limit:
        load.samples = load.samples[: args.limit]
    if not load.samples:
        raise DatasetError(f"{args.dataset}: no sample to evaluate ({len(load.skipped_samples)} skipped: no box "
                           "inside the crop)")
    for note in load.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{args.dataset}: {len(load.samples)} samples; skipped {len(load.skipped_samples)} with no box inside the "
          f"crop; dropped {load.dropped_boxes} boxes outside it", file=sys.stderr)
    check_writable_folder(args.out)
    overrides = overrides_of(args)
    lm = args.method in ("ldm", "untrained")
    settings = {"dataset": args.dataset, "root": str(args.root) if args.root else None,
                "csv": str(args.csv) if args.csv else None, "method": args.method,
                "model": args.model if lm else None, "preset": args.preset if lm else None,
                "overrides": overrides if lm else None, "precision": args.precision if lm else None,
                "biovil_weights": args.biovil_weights if args.method.startswith("biovil") else None,
                "limit": args.limit, "seed": args.seed if args.dataset == "phantoms" else None,
                "n": args.n if args.dataset == "phantoms" else None, "n_samples": len(load.samples),
                "skipped_samples": load.skipped_samples, "dropped_boxes": load.dropped_boxes}
    _quiet_transformers()
    method_options = MethodOptions(
        model=args.model, preset=args.preset, overrides=overrides, device=args.device, precision=args.precision,
        text_encoder=args.text_encoder, biovil_weights=args.biovil_weights)
    method = make_method(args.method, method_options)
    if lm:
        settings["config"] = method.grounder.config.to_dict()
    cluster = cluster_options(args)
    executor = None
    if cluster is not None:
        from medground.cluster import ray_executor
        from medground.evaluate.runner import GroupScoring

        executor = ray_executor(GroupScoring(args.method, method_options), cluster)
    summary = run_evaluation(load, method, RunWriter(args.out), settings, resume=args.resume, executor=executor)
    print(summary_markdown(summary))
    print(f"per-sample results: {args.out / 'samples.jsonl'}; summaries: {args.out}/summary.{{json,md,csv}}; "
          f"contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from medground.backbones.model_dir import load_model
    from medground.evaluate.store import check_writable_folder
    from medground.evaluate.sweep import parse_grid, run_sweep
    from medground.toy.phantoms import VALIDATION_SEEDS

    grid = parse_grid(args.grid)
    load = dataset_of(args, default_seed=VALIDATION_SEEDS.start)
    if args.dataset == "phantoms" and (args.seed not in VALIDATION_SEEDS or
                                       args.seed + args.n - 1 not in VALIDATION_SEEDS):
        raise ConfigError(f"a sweep chooses settings, so on phantoms it runs on the validation seeds "
                          f"{VALIDATION_SEEDS.start}..{VALIDATION_SEEDS.stop - 1} only (never evaluation seeds); "
                          f"got {args.seed}..{args.seed + args.n - 1}")
    check_writable_folder(args.out)
    _quiet_transformers()
    model = load_model(args.model, device=args.device, text_encoder=args.text_encoder)
    record = {"dataset": args.dataset, "root": str(args.root) if args.root else None, "seed": args.seed,
              "n": args.n, "model": args.model, "n_samples": len(load.samples)}
    run_sweep(load, model, args.preset, overrides_of(args), grid, args.out, record, resume=args.resume)
    print((args.out / "sweep.md").read_text())
    print(f"ranked table: {args.out / 'sweep.md'} and sweep.json; one run folder per combination in {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from medground.evaluate.report import compare_runs

    print(compare_runs(args.runs))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from medground.backbones.model_dir import load_model
    from medground.evaluate.store import check_writable_folder
    from medground.grounder import Grounder
    from medground.images import read_image
    from medground.reports.findings import read_mentions
    from medground.reports.grounding import write_outputs

    report = read_report_text(args.report)
    pixels = read_image(args.image)
    read_mentions(report)  # a missing medspaCy or an empty report fails here, before the model loads
    check_writable_folder(args.out)
    _quiet_transformers()
    model = load_model(args.model, device=args.device, text_encoder=args.text_encoder)
    grounder = Grounder(model, args.preset, overrides=overrides_of(args), progress=True, precision=args.precision)
    grounding = grounder.ground_report(pixels, report)
    record = {"image": str(args.image), "model": str(args.model), "preset": args.preset}
    written = write_outputs(args.out, args.image, pixels, grounding, record)
    for finding in grounding.findings:
        top = finding.result.boxes[0] if finding.result.boxes else None
        where = ("flat map, not located" if finding.result.flat else
                 f"top box x={top.x} y={top.y} w={top.w} h={top.h} score={top.score:.2f}" if top else "no region")
        print(f"{finding.number}. [{finding.status}] {finding.text!r}: {where}")
    for mention in grounding.dropped:
        print(f"-  [{mention.reason}] {mention.text!r}: not grounded")
    print(grounding.message)
    print(f"wrote {', '.join(str(path) for path in written[:2])}" + (f" and {len(written) - 2} heatmap(s) (.npy)"
                                                                   if len(written) > 2 else ""))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from medground.app.server import check_can_serve, serve
    from medground.backbones.model_dir import load_model
    from medground.grounder import Grounder

    check_can_serve(args.host, args.port)
    _quiet_transformers()
    model = load_model(args.model, device=args.device, text_encoder=args.text_encoder)
    grounder = Grounder(model, args.preset, overrides=overrides_of(args), progress=True, precision=args.precision)
    serve(grounder, {"model": str(args.model), "preset": args.preset}, host=args.host, port=args.port,
          share=args.share, max_upload_mb=args.max_upload_mb)
    return 0


def read_report_text(source: str) -> str:
    """The report from a file, or from standard input for ``-``."""
    from medground.errors import ReportError

    if source == "-":
        return sys.stdin.read()
    path = Path(source)
    if not path.is_file():
        raise ReportError(f"report file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save the report as UTF-8")\
            from None


def cluster_options(args: argparse.Namespace) -> Any:
    """None for ``--engine local``, else where and how wide to run on Ray."""
    from medground.cluster import ClusterOptions

    if args.engine == "local":
        if args.address or args.workers:
            raise ConfigError("--address and --workers need --engine ray")
        return None
    return ClusterOptions(address=args.address, workers=args.workers, device=args.device, threads=args.worker_threads)


def cmd_batch(args: argparse.Namespace) -> int:
    from medground.batch.manifest import Manifest
    from medground.batch.runner import run_batch, summary_line
    from medground.batch.work import BatchJob
    from medground.evaluate.store import check_writable_folder

    manifest = Manifest.open(args.manifest, args.root)
    check_writable_folder(args.out)
    cluster = cluster_options(args)
    _quiet_transformers()
    job = BatchJob(model=args.model, preset=args.preset, overrides=overrides_of(args), device=args.device,
                   precision=args.precision, text_encoder=args.text_encoder, batch_size=args.batch_size,
                   compile=args.compile, map_side=args.map_side, map_dtype=args.map_dtype)
    summary = run_batch(manifest, args.out, job, resume=args.resume, images_per_unit=args.unit_images,
                        cluster=cluster, loader_workers=args.loader_workers)
    print(summary_line(summary, args.out))
    return 0


def _engine_flags() -> argparse.ArgumentParser:
    """Flags of the commands that can run on a Ray cluster."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("engine")
    group.add_argument("--engine", default="local", choices=["local", "ray"],
                       help="local: this process (default); ray: a Ray cluster, one actor per GPU (--device cuda) or "
                       "CPU actors (needs medground[ray])")
    group.add_argument("--address", default=None, help="ray: address of an existing cluster (auto, host:6379, "
                       "ray://host:10001); default: start a local one for this run")
    group.add_argument("--workers", type=positive_int, default=None,
                       help="ray: actors (default: the cluster's GPUs, or its CPUs / --worker-threads)")
    group.add_argument("--worker-threads", type=positive_int, default=1, help="ray: CPUs per CPU actor (default 1)")
    return parent


def _add_batch_command(commands: Any, model_flags: argparse.ArgumentParser,
                       engine_flags: argparse.ArgumentParser) -> None:
    from medground.batch.manifest import IMAGES_PER_UNIT

    batch = commands.add_parser(
        "batch", parents=[model_flags, engine_flags], help="ground every (image, phrase) of a manifest into Parquet "
        "(streaming, resumable)",
        description="Ground every row of MANIFEST (CSV, JSONL or Parquet; columns image, phrase or phrases, optional "
        "id) into OUT/parts/*.parquet: one row per (manifest row, phrase) with id, image, phrase, boxes and scores, "
        "mask area, timings and the map (the model's centre crop, --map-side squared, --map-dtype). Phrases of one "
        "image share one inversion. Memory stays bounded whatever the manifest's size; after a kill, --resume "
        "continues without losing or repeating a row. Read the result with pandas.read_parquet('OUT/parts').")
    batch.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest file (.csv, .jsonl or .parquet)")
    batch.add_argument("--out", type=Path, required=True, help="output folder")
    batch.add_argument("--root", type=Path, default=None,
                       help="folder relative image paths start from (default: the manifest's folder)")
    batch.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    batch.add_argument("--batch-size", type=positive_int, default=None,
                       help="images per inversion batch (default: from free GPU memory; 8 on the CPU)")
    batch.add_argument("--unit-images", type=positive_int, default=IMAGES_PER_UNIT,
                       help=f"images per work unit, the grain of the plan and of resume (default {IMAGES_PER_UNIT}); "
                       "finished units are written out every 4096 rows or 60 s, so a kill loses at most that much")
    batch.add_argument("--compile", action="store_true",
                       help="run the inversion through a compiled UNet (torch.compile; CUDA graphs on CUDA); the first "
                       "batch of each shape pays the compile time")
    batch.add_argument("--map-side", type=positive_int, default=64,
                       help="side of the stored map, a divisor of the model's input side (default 64)")
    batch.add_argument("--map-dtype", default="float16", choices=["float16", "float32"],
                       help="stored map values (default float16: 8 KB per row at side 64)")
    batch.add_argument("--loader-workers", type=non_negative_int, default=None,
                       help="local engine: processes decoding images ahead (default: 1 on the CPU, up to 4 on CUDA)")
    batch.set_defaults(func=cmd_batch)


def _model_flags() -> argparse.ArgumentParser:
    """Flags of every command that runs a latent diffusion model."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("model and recipe")
    group.add_argument("--model", default="toy", help="model folder, known name (toy, toy-sd), diffusers pipeline "
                       "folder or hub-id@revision (default: toy)")
    group.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="grounding recipe (default: paper)")
    group.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one grounding setting "
                       "(repeatable), e.g. --set gaussian_sigma=2 --set threshold=none")
    group.add_argument("--config", type=Path, metavar="FILE.json", help="grounding settings from a JSON object "
                       "(applied before --set)")
    group.add_argument("--text-encoder", default=None,
                       help="override the text encoder source: local folder or hub-id[@revision]")
    group.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default: cpu)")
    group.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help=PRECISION_HELP)
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medground",
        description="Zero-shot phrase grounding in chest X-rays from a frozen latent diffusion model's "
        "cross-attention during DDIM inversion (Vilouras et al., arXiv 2404.12920).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_flags = _model_flags()
    engine_flags = _engine_flags()

    ground = commands.add_parser("ground", parents=[model_flags],
                                 help="ground phrases in one image and write heatmaps, overlays, JSON",
                                 description="Ground each PHRASE in IMAGE. Per phrase writes to --out, under a name "
                                 "unique to (image, phrase, model, settings): the original-size heatmap (.npy, NaN "
                                 "outside the model's centre crop), an overlay (.png) and a JSON with boxes, scores, "
                                 "timings and the effective config.")
    ground.add_argument("image", type=Path, help="PNG, JPEG or DICOM radiograph")
    ground.add_argument("phrases", nargs="+", metavar="PHRASE", help="one or more report phrases")
    ground.add_argument("--out", type=Path, required=True, help="output folder")
    ground.set_defaults(func=cmd_ground)

    report = commands.add_parser(
        "report", parents=[model_flags], help="ground every positive finding of a radiology report in one image",
        description="Read the report's sentences and finding mentions (medspaCy: sentence splitter, sections, ConText "
        "negation and uncertainty), keep the positive and uncertain findings (uncertain ones flagged), drop negated, "
        "hypothetical and historical ones and those of the indication/history/comparison sections, and ground every "
        "kept finding with one shared inversion of IMAGE. Writes to --out: one heatmap per finding (.npy), an "
        "overlay of all findings with a legend (.png) and a JSON of everything, including what was not grounded "
        "and why. Needs medground[reports].")
    report.add_argument("image", type=Path, help="PNG, JPEG or DICOM radiograph")
    report.add_argument("--report", required=True, metavar="FILE|-", help="the report as UTF-8 text; - reads stdin")
    report.add_argument("--out", type=Path, required=True, help="output folder")
    report.set_defaults(func=cmd_report)

    serve = commands.add_parser(
        "serve", parents=[model_flags], help="the web app: upload a radiograph, ground phrases or a whole report",
        description="Serve a web page (Gradio) where a user uploads a PNG, JPEG or DICOM radiograph, types phrases or "
        "pastes a report, and sees the findings' heatmaps, masks and boxes (one colour each), a table of boxes and "
        "scores, and downloads the JSON and the maps. The model is loaded once; queries are queued and run one at a "
        "time. Offline: no CDN assets, analytics off; uploads stay in memory and in a temporary folder deleted on "
        "exit. Needs medground[app].")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                       "machine only; 0.0.0.0 opens it to the network)")
    serve.add_argument("--port", type=positive_int, default=7860, help="port (default: 7860)")
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    serve.add_argument("--max-upload-mb", type=positive_int, default=20, help="largest upload in MB (default: 20)")
    serve.set_defaults(func=cmd_serve)

    evaluate = commands.add_parser(
        "eval", parents=[model_flags, engine_flags],
        help="evaluate a method on a dataset (resumable) and write paper-style tables",
        description="Run METHOD over every sample of a dataset. RUN_DIR/samples.jsonl gets one line per sample as "
        "it goes (use --resume after an interruption; one run per folder at a time); then summary.json/.md/.csv (per "
        "class mean and std, and the paper's headline: the unweighted mean over classes +- std across classes) and "
        "contact_sheet.png.")
    evaluate.add_argument("--dataset", required=True, choices=list(DATASETS))
    evaluate.add_argument("--root", type=Path, default=None, help="image root (MIMIC-CXR-JPG for ms-cxr)")
    evaluate.add_argument("--csv", type=Path, default=None, help="annotation CSV (default: looked up in --root)")
    evaluate.add_argument("--method", required=True, choices=list(METHODS))
    evaluate.add_argument("--biovil-weights", default=None, metavar="DIR|HUB-ID[@REV]",
                          help="biovil, biovil-t: a local copy of the weights repository or another hub repo "
                          "(default: the official one)")
    evaluate.add_argument("--limit", type=positive_int, default=None, help="only the first N samples")
    evaluate.add_argument("--seed", type=non_negative_int, default=None, help="phantoms: first seed (default "
                          "123456789)")
    evaluate.add_argument("--n", type=positive_int, default=None, help="phantoms: number of phantoms (default 40)")
    evaluate.add_argument("--out", type=Path, required=True, help="run folder")
    evaluate.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    evaluate.set_defaults(func=cmd_eval)

    sweep = commands.add_parser(
        "sweep", parents=[model_flags], help="evaluate a grid of read-out settings and rank them (resumable)",
        description="Evaluate the LDM with the preset and --set settings plus every combination of the --grid values "
        "on a dataset (phantoms: the validation seeds only), and write a ranked table (mIoU, AUROC, CNR, "
        "discrimination, UNet evaluations, seconds). Each combination is a run folder; --resume continues.")
    sweep.add_argument("--dataset", default="phantoms", choices=list(DATASETS))
    sweep.add_argument("--root", type=Path, default=None, help="image root (not for phantoms)")
    sweep.add_argument("--csv", type=Path, default=None, help="annotation CSV (default: looked up in --root)")
    sweep.add_argument("--seed", type=non_negative_int, default=None, help="phantoms: first validation seed "
                       "(default 5000000)")
    sweep.add_argument("--n", type=positive_int, default=None, help="phantoms: number of phantoms (default 40)")
    sweep.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                       help="a setting and its values (repeatable; the grid is their product)")
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    sweep.set_defaults(func=cmd_sweep)


    _add_batch_command(commands, model_flags, engine_flags)

    compare = commands.add_parser("compare", help="compare evaluation runs side by side",
                                  description="Per class and overall means of several runs on the samples they "
                                  "share, with paired differences to the first run. Reads the runs, never changes "
                                  "them.")
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    compare.set_defaults(func=cmd_compare)

    models = commands.add_parser("models", help="list the model names load_model knows, with their family")
    models.set_defaults(func=cmd_models)

    demo = commands.add_parser("demo", help="ground phantoms with the shipped toy model and print metrics",
                               description="Generate chest-X-ray phantoms, ground their finding phrases with the "
                               "embedded toy model, write overlays (image, truth box, heatmap, predicted box) and "
                               "a contact sheet, and print a metrics table against position-only baselines.")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--model", default="toy", help="toy model name or folder (default: toy)")
    demo.add_argument("--seed", type=non_negative_int, default=7_000_000, help="first phantom seed")
    demo.add_argument("--n", type=positive_int, default=6, help="phantoms to draw (those with findings)")
    demo.add_argument("--n-eval", type=positive_int, default=24, help="phantoms in the metrics table")
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(func=cmd_demo)

    toy = commands.add_parser("toy", help="the toy world: evaluate the shipped phantom models")
    toy_commands = toy.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    toy_eval = toy_commands.add_parser(
        "eval", parents=[model_flags], help="ground held-out phantoms and compare with baselines",
        description="Ground every finding phrase of N phantoms generated from seeds S..S+N-1 and report mIoU, "
        "AUROC (binned and exact), CNR and phrase discrimination for the model and the baselines uniform, "
        "centre, prior (mean validation box mask) and untrained (random weights, same pipeline).")
    toy_eval.add_argument("--seed", type=non_negative_int, required=True,
                          help="first phantom seed (keep it away from the training seeds 0..199999 and the "
                          "validation seeds 5000000..5000199)")
    toy_eval.add_argument("--n", type=positive_int, default=40, help="number of phantoms")
    toy_eval.add_argument("--json", action="store_true", help="print JSON instead of a table")
    toy_eval.add_argument("--methods", nargs="+", default=list(TOY_METHODS), choices=list(TOY_METHODS))
    toy_eval.set_defaults(func=cmd_toy_eval)

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

    importer = commands.add_parser(
        "import-diffusers", help="import a diffusers pipeline (RoentGen, RoentGen-v2, G2G, SD) as a model directory",
        description="Load a diffusers pipeline folder or hub-id[@revision] strictly, record SHA-256 of every weight "
        "file and the data-use terms, and write a medground model directory. --unet and --text-encoder swap in "
        "components from elsewhere (Generate-to-Ground: SD-1.5 pipeline + its UNet + CXR-BERT).")
    importer.add_argument("source", help="pipeline folder (model_index.json) or hub-id[@revision]")
    importer.add_argument("--out", type=Path, required=True, help="output model directory")
    importer.add_argument("--unet", default=None, metavar="DIR|HUB-ID[@REV][:SUBFOLDER]",
                          help="take the UNet from here instead (folder with config.json, or hub repo + subfolder)")
    importer.add_argument("--text-encoder", default=None, metavar="DIR|HUB-ID[@REV]",
                          help="take the text encoder and tokenizer from here instead (e.g. CXR-BERT for G2G)")
    importer.add_argument("--name", default=None, help="model name (default: the source's)")
    importer.add_argument("--data-terms", default=None, help="data-use terms to record (default: known terms of "
                          "the source, e.g. MIMIC-CXR credentialing for RoentGen)")
    importer.set_defaults(func=cmd_import_diffusers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedgroundError as exc:
        print(f"medground: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medground: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
