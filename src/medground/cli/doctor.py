"""``medground doctor``: the installation at a glance (see ``medground.doctor``)."""

from __future__ import annotations

import argparse

from medground.cli.common import Parents, command


def add(commands: argparse._SubParsersAction, _parents: Parents) -> None:
    """Register ``doctor`` on ``commands``."""
    command(commands, "doctor", run_doctor)


def run_doctor(_args: argparse.Namespace) -> int:
    """Show what this installation has: Python, torch and devices, extras, models, Chromium, Hugging Face cache.

    Each missing extra is shown with the pip line that installs it (the same line an error about it prints). Nothing
    is downloaded or loaded.
    """
    from medground.doctor import report

    print(report())
    return 0
