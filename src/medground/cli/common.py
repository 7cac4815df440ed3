"""What every command shares: argument types, the parent parsers of shared flags, and the settings they give.

Building a parser imports nothing heavy (no torch): choices are read from the owning modules' constants, which are
plain data.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medground.cluster import ENGINES
from medground.config import PRECISIONS, PRESETS

PRECISION_HELP = "fp32 (exact, default) or on CUDA tf32, bf16, fp16 (faster, not exact)"


def int_at_least(minimum: int) -> Callable[[str], int]:
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


at_least_1, at_least_0 = int_at_least(1), int_at_least(0)


def command(commands: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int],
            parents: tuple[argparse.ArgumentParser, ...] = (), description: str | None = None
            ) -> argparse.ArgumentParser:
    """A subcommand whose help is its handler's docstring: the first line is its line in ``medground --help``, the
    rest heads its own ``--help`` (unless ``description`` is given).

    Args:
        commands: the subparsers to add it to (``medground``'s, or ``toy``'s).
        name: the subcommand.
        run: its handler; it returns the exit status.
        parents: parent parsers of shared flags (``model_flags``, ``engine_flags``).
        description: the ``--help`` text instead of the docstring's body.
    """
    summary, _, rest = inspect.cleandoc(run.__doc__ or "").partition("\n\n")
    summary = summary.rstrip(".")
    parser = commands.add_parser(name, parents=list(parents), help=summary[:1].lower() + summary[1:],
                                 description=description or " ".join(rest.split()) or summary)
    parser.set_defaults(func=run)
    return parser


def quiet_transformers() -> None:
    """Per-file load bars of transformers would drown our own output."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """``--config FILE`` then each ``--set key=value``, validated as a preset is."""
    from medground.config import overrides_from

    return overrides_from(getattr(args, "config", None), getattr(args, "set", None) or [])


def model_of(args: argparse.Namespace) -> Any:
    """The model the flags name, loaded once (transformers' bars off)."""
    from medground.loading import load_model

    quiet_transformers()
    return load_model(args.model, device=args.device, text_encoder=args.text_encoder)


def config_of(args: argparse.Namespace, model: Any) -> Any:
    """``--preset``, ``--config`` and ``--set`` resolved against ``model``: the one config a command runs."""
    from medground.grounder import resolve_config

    return resolve_config(model, args.preset, overrides_of(args))


def model_flags() -> argparse.ArgumentParser:
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
    group.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or mps (default: cpu)")
    group.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help=PRECISION_HELP)
    return parent


def engine_flags() -> argparse.ArgumentParser:
    """Flags of the commands that can run on a Ray cluster."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("engine")
    group.add_argument("--engine", default=ENGINES[0], choices=list(ENGINES),
                       help="local: this process (default); ray: a Ray cluster, one actor per GPU (--device cuda) or "
                       "CPU actors (needs medground[ray])")
    group.add_argument("--address", default=None, help="ray: address of an existing cluster (auto, host:6379, "
                       "ray://host:10001); default: start a local one for this run")
    group.add_argument("--workers", type=at_least_1, default=None,
                       help="ray: actors (default: the cluster's GPUs, or its CPUs / --worker-threads)")
    group.add_argument("--worker-threads", type=at_least_1, default=1, help="ray: CPUs per CPU actor (default 1)")
    return parent


def confirm(yes: bool, what: str, hint: str) -> Callable[[Any], None]:
    """What a long command does with its work estimate: print it, and refuse it over an hour unless ``--yes``."""
    from medground.engine.cost import CONFIRM_SECONDS

    def check(work: Any) -> None:
        print(work.describe(what), file=sys.stderr)
        work.check(what, None if yes else CONFIRM_SECONDS, hint)

    return check


def cluster_of(args: argparse.Namespace) -> Any:
    """None for the local engine, else where and how wide to run on Ray."""
    from medground.cluster import cluster_options

    return cluster_options(args.engine, args.address, args.workers, args.device, args.worker_threads)


Parents = dict[str, argparse.ArgumentParser]
"""The shared parent parsers by name (``model``, ``engine``), made once per parser."""
