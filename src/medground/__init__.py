"""medground: zero-shot phrase grounding in chest X-rays from a frozen latent diffusion model's
cross-attention during DDIM inversion (Vilouras et al., arXiv 2404.12920).

The public names are loaded on first use, so importing the package (and ``medground --help``) loads no torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

_PUBLIC = {
    "Backbone": "medground.backbones.base",
    "GroundingConfig": "medground.config",
    "Grounder": "medground.grounder",
    "GroundingResult": "medground.results",
    "load_model": "medground.loading",
    "preset": "medground.config",
}
__all__ = sorted(_PUBLIC)
__version__ = importlib.metadata.version("medground")
"""From the installed package's metadata: ``pyproject.toml`` is the one place the version is written."""


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'medground' has no attribute {name!r}")
