"""``medground eval`` (a method on a dataset), ``sweep`` (a grid of read-out settings) and ``compare`` (runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medground.cli.common import (
    Parents,
    at_least_0,
    at_least_1,
    cluster_of,
    command,
    config_of,
    confirm,
    model_of,
    overrides_of,
)
from medground.datasets import DATASETS
from medground.methods import METHODS


def add(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """Register ``eval``, ``sweep`` and ``compare`` on ``commands``, with the shared flags of ``parents``."""
    evaluate = command(commands, "eval", run_eval, parents=(parents["model"], parents["engine"]))
    _dataset_flags(evaluate, "held-out phantoms: first seed (default 123456789)")
    evaluate.add_argument("--method", required=True, choices=list(METHODS))
    evaluate.add_argument("--biovil-weights", default=None, metavar="DIR|HUB-ID[@REV]",
                          help="biovil, biovil-t: a local copy of the weights repository or another hub repo "
                          "(default: the official one)")
    evaluate.add_argument("--limit", type=at_least_1, default=None, help="only the first N samples")
    evaluate.add_argument("--out", type=Path, required=True, help="run folder")
    evaluate.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")

    sweep = command(commands, "sweep", run_sweep, parents=(parents["model"],))
    _dataset_flags(sweep, "phantoms: first validation seed (default 5000000)", default="phantoms")
    sweep.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                       help="a setting and its values (repeatable; the grid is their product)")
    sweep.add_argument("--out", type=Path, required=True, help="sweep folder")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    sweep.add_argument("--yes", action="store_true", help="run even when the estimate is over an hour")

    compare = command(commands, "compare", run_compare)
    compare.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")


def _dataset_flags(parser: argparse.ArgumentParser, seed_help: str, default: str | None = None) -> None:
    parser.add_argument("--dataset", required=default is None, default=default, choices=list(DATASETS))
    parser.add_argument("--root", type=Path, default=None, help="image root of a file dataset (MIMIC-CXR-JPG for "
                        "ms-cxr)")
    parser.add_argument("--csv", type=Path, default=None, help="annotation CSV (default: looked up in --root)")
    parser.add_argument("--seed", type=at_least_0, default=None, help=seed_help)
    parser.add_argument("--n", type=at_least_1, default=None, help="phantoms: number of phantoms (default 40)")


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a method on a dataset (resumable) and write paper-style tables.

    Run METHOD over every sample of a dataset. RUN_DIR/samples.jsonl gets one line per sample as it goes (use
    --resume after an interruption; one run per folder at a time); then summary.json/.md/.csv (per class mean
    and std, and the paper's headline: the unweighted mean over classes +- std across classes) and
    contact_sheet.png.
    """
    from medground.cluster import ray_executor
    from medground.datasets import load_dataset
    from medground.datasets.phantoms import HELD_OUT_SEED
    from medground.evaluate.report import summary_markdown
    from medground.evaluate.runner import GroupScoring, evaluation_record, run_evaluation
    from medground.evaluate.store import RunWriter
    from medground.methods import MODEL_METHODS, MethodOptions, make_method
    from medground.outputs import check_writable_folder

    cluster = cluster_of(args)  # a bad address fails first
    load = load_dataset(args.dataset, args.root, args.csv, args.seed, args.n, HELD_OUT_SEED).first(args.limit)
    for note in load.notes:
        print(f"note: {note}", file=sys.stderr)
    print(load.describe(), file=sys.stderr)
    check_writable_folder(args.out)
    options = MethodOptions(device=args.device, precision=args.precision, text_encoder=args.text_encoder,
                            biovil_weights=args.biovil_weights)
    if args.method in MODEL_METHODS:
        model = model_of(args)
        options = MethodOptions(**{**vars(options), "model": model, "config": config_of(args, model)})
    requested = {"model": args.model, "preset": args.preset, "overrides": overrides_of(args)}
    record = evaluation_record(load, args.method, options, requested, args.limit)
    workers = MethodOptions(**{**vars(options), "model": args.model})  # each Ray worker loads its own model
    executor = ray_executor(GroupScoring(args.method, workers), cluster) if cluster is not None else None
    summary = run_evaluation(load, make_method(args.method, options), RunWriter(args.out), record,
                             resume=args.resume, executor=executor)
    print(summary_markdown(summary))
    print(f"per-sample results: {args.out / 'samples.jsonl'}; summaries: {args.out}/summary.{{json,md,csv}}; "
          f"contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    """Evaluate a grid of read-out settings and rank them (resumable).

    Evaluate the LDM with the preset and --set settings plus every combination of the --grid values on a dataset
    (phantoms: the validation seeds only), and write a ranked table (mIoU, AUROC, CNR, discrimination, UNet
    evaluations, seconds). Each combination is a run folder; --resume continues.
    """
    from medground.datasets import load_dataset
    from medground.datasets.phantoms import VALIDATION_SEEDS
    from medground.evaluate.sweep import check_sweep_dataset, parse_grid, run_sweep
    from medground.outputs import check_writable_folder

    grid = parse_grid(args.grid)
    load = load_dataset(args.dataset, args.root, args.csv, args.seed, args.n, VALIDATION_SEEDS.start)
    check_sweep_dataset(load)
    check_writable_folder(args.out)
    model = model_of(args)
    record = {"dataset": args.dataset, "root": load.source["root"], "seed": load.source["seed"],
              "n": load.source["n"], "model": args.model, "n_samples": len(load.samples)}
    run_sweep(load, model, args.preset, overrides_of(args), grid, args.out, record, resume=args.resume,
              on_estimate=confirm(args.yes, "the sweep", "fewer --grid values or a smaller --n"))
    print((args.out / "sweep.md").read_text())
    print(f"ranked table: {args.out / 'sweep.md'} and sweep.json; one run folder per combination in {args.out}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Compare evaluation runs side by side.

    Per class and overall means of several runs on the samples they share, with paired differences to the first
    run. Reads the runs, never changes them.
    """
    from medground.evaluate.report import compare_runs

    print(compare_runs(args.runs))
    return 0
