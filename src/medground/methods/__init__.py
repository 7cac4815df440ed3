"""Grounding methods under one interface: a batch of samples in, one original-size heatmap per sample out.

The registry names itself without importing any method, so listing choices (``medground --help``) loads nothing.
Every method class has a ``name``, a ``from_options(name, options)`` constructor and ``heatmaps(samples)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

METHODS: dict[str, str] = {
    "ldm": "medground.methods.ldm:LdmMethod",
    "untrained": "medground.methods.ldm:LdmMethod",
    "uniform": "medground.methods.priors:UniformMethod",
    "centre": "medground.methods.priors:CentreMethod",
    "prior": "medground.methods.priors:PhantomBoxPrior",
    "biovil": "medground.methods.biovil:BiovilMethod",
    "biovil-t": "medground.methods.biovil:BiovilMethod",
}
"""ldm: the paper's method with a model. untrained: the same model's architecture with fresh random weights (does
training matter?). uniform / centre / prior: position-only baselines. biovil / biovil-t: contrastive baselines."""


MODEL_METHODS = ("ldm", "untrained")
"""Methods that run a latent diffusion model (and so take a model and a grounding config)."""


@dataclass(frozen=True)
class MethodOptions:
    """What a method may need; each method reads only its own fields."""

    model: Any = "toy"
    """A model name or folder, or a loaded Backbone (reused as is)."""
    config: Any = None
    """The grounding config, resolved against the model once by the caller (``grounder.resolve_config``); None: the
    ``paper`` preset. Workers get it resolved, never a preset name."""
    device: str = "cpu"
    precision: str = "fp32"
    text_encoder: str | None = None
    biovil_weights: str | None = None
    batch_size: int = 8
    untrained_seed: int = 12345


def make_method(name: str, options: MethodOptions | None = None) -> Any:
    """The method ``name`` built from ``options`` (None: the defaults), its module imported only now; an unknown
    name is a ConfigError."""
    from medground.errors import ConfigError

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {list(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls).from_options(name, options or MethodOptions())
