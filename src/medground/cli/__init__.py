"""Command line: ``medground COMMAND``; ``medground --help`` lists the commands, each has its own ``--help``.

One module per command group registers its parsers (``add``) and holds thin handlers (``run_*``) that call the
package's functions. Imports are lazy: building the parser (``medground --help``) loads no torch. Flags shared by the
commands that run a model live on parent parsers (``common``), so they read the same everywhere. Every failure
medground anticipates is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from medground.cli import batch, common, doctor, evaluate, ground, models, serve, toy
from medground.errors import MedgroundError

GROUPS = (ground, serve, evaluate, batch, models, toy, doctor)
"""Command groups in the order ``--help`` lists them."""


def version() -> str:
    """The installed package's version (from its metadata), for ``--version``."""
    from medground import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``medground`` parser with every group's subcommands; building it imports no torch."""
    parser = argparse.ArgumentParser(
        prog="medground",
        description="Zero-shot phrase grounding in chest X-rays from a frozen latent diffusion model's "
        "cross-attention during DDIM inversion (Vilouras et al., arXiv 2404.12920).",
    )
    parser.add_argument("--version", action="version", version=f"medground {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = {"model": common.model_flags(), "engine": common.engine_flags()}
    for group in GROUPS:
        group.add(commands, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names (None: the process's arguments); returns the exit status: 2 after a
    MedgroundError, printed as one line, 130 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except MedgroundError as exc:
        print(f"medground: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medground: interrupted", file=sys.stderr)
        return 130
