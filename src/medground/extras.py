"""medground's optional parts (pip extras): what each one adds, the modules it needs, and the line that installs it.

Every error about a missing extra and ``medground doctor`` print the same install line, taken from here, so a user
who copies it from either place gets the same thing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from medground.errors import ExtraNotInstalledError


@dataclass(frozen=True)
class Extra:
    """One pip extra of medground (``pip install 'medground[<name>]'``)."""

    name: str
    adds: str
    modules: tuple[str, ...]

    @property
    def install_line(self) -> str:
        return f"pip install 'medground[{self.name}]'"

    def missing(self) -> list[str]:
        """The modules of this extra that cannot be imported here (found without importing them: some are slow)."""
        return [module for module in self.modules if importlib.util.find_spec(module) is None]


EXTRAS: dict[str, Extra] = {extra.name: extra for extra in (
    Extra("reports", "whole reports: medground report, reports.ground_report", ("medspacy",)),
    Extra("app", "the web app: medground serve", ("gradio", "medspacy")),
    Extra("ray", "--engine ray for batch and eval", ("ray",)),
    Extra("baselines", "the BioViL / BioViL-T baselines", ("health_multimodal", "torchvision")),
    Extra("docs", "the documentation site: make docs", ("mkdocs", "material", "mkdocstrings")),
    Extra("dev", "the tests: make test", ("pytest", "ruff", "selenium", "build")),
)}
"""The extras pyproject.toml declares, in the order ``medground doctor`` lists them."""


def extra_missing(name: str, what: str, cause: BaseException | None = None) -> ExtraNotInstalledError:
    """The error for ``what`` needing extra ``name``: the missing modules, then the install line.

    Args:
        name: the extra, a key of ``EXTRAS``.
        what: what the user asked for, e.g. "the web app".
        cause: the import failure, when there was one (its message follows, in parentheses).
    """
    extra = EXTRAS[name]
    needed = extra.missing() or list(extra.modules)
    detail = f" ({cause})" if cause is not None else ""
    return ExtraNotInstalledError(f"{what}: {' and '.join(needed)} not installed; {extra.install_line}{detail}")
