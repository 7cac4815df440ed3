"""``medground demo`` (the shipped toy model on phantoms) and ``medground toy eval`` (held-out phantom tables)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medground.cli.common import Parents, at_least_0, at_least_1, command, confirm, overrides_of, quiet_transformers
from medground.toy import DEMO_SEED, TOY_METHODS


def add(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """Register ``demo`` and ``toy eval`` on ``commands``, with the shared flags of ``parents``."""
    demo = command(commands, "demo", run_demo_command)
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default: demo-out)")
    demo.add_argument("--model", default="toy", help="toy model name or folder (default: toy)")
    demo.add_argument("--seed", type=at_least_0, default=DEMO_SEED, help="first phantom seed")
    demo.add_argument("--n", type=at_least_1, default=6, help="phantoms to draw (those with findings)")
    demo.add_argument("--n-eval", type=at_least_1, default=24, help="phantoms in the metrics table")
    demo.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps (default: cpu)")

    toy = commands.add_parser("toy", help="the toy world: evaluate the shipped phantom models",
                              description="The toy world: phantoms with known findings and the two small models "
                              "trained on them, shipped inside the package.")
    toy_commands = toy.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    toy_eval = command(toy_commands, "eval", run_toy_eval, parents=(parents["model"],))
    toy_eval.add_argument("--seed", type=at_least_0, required=True,
                          help="first phantom seed (keep it away from the training seeds 0..199999 and the "
                          "validation seeds 5000000..5000199)")
    toy_eval.add_argument("--n", type=at_least_1, default=40, help="number of phantoms")
    toy_eval.add_argument("--json", action="store_true", help="print JSON instead of a table")
    toy_eval.add_argument("--methods", nargs="+", default=list(TOY_METHODS), choices=list(TOY_METHODS))
    toy_eval.add_argument("--yes", action="store_true", help="run even when the estimate is over an hour")


def run_demo_command(args: argparse.Namespace) -> int:
    """Ground phantoms with the shipped toy model and print metrics.

    Generate chest-X-ray phantoms, ground their finding phrases with the embedded toy model, write overlays
    (image, truth box, heatmap, predicted box) and a contact sheet, and print a metrics table against
    position-only baselines.
    """
    from medground.outputs import check_writable_folder
    from medground.toy.demo import run_demo

    check_writable_folder(args.out)
    quiet_transformers()
    report = run_demo(args.out, args.model, args.seed, args.n, args.n_eval, args.device)
    print(report["summary_line"])
    print(report["table"])
    return 0


def run_toy_eval(args: argparse.Namespace) -> int:
    """Ground held-out phantoms and compare with baselines.

    Ground every finding phrase of N phantoms generated from seeds S..S+N-1 and report mIoU, AUROC (binned and
    exact), CNR and phrase discrimination for the model and the baselines uniform, centre, prior (mean
    validation box mask) and untrained (random weights, same pipeline).
    """
    from medground.toy.evaluate import evaluate_toy, format_table, held_out_warning

    warning = held_out_warning(args.seed, args.n)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    quiet_transformers()
    report = evaluate_toy(args.model, args.seed, args.n, methods=args.methods, preset=args.preset,
                          overrides=overrides_of(args), device=args.device,
                          on_estimate=confirm(args.yes, "the toy table", "a smaller --n or fewer --methods"))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
