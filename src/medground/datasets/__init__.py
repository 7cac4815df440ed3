"""Datasets for evaluation; each reader yields the same ``Sample`` record (see ``base``).

The registry names itself here without importing any reader, so listing the choices costs nothing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

DATASETS: dict[str, str] = {
    "ms-cxr": "medground.datasets.ms_cxr:read_ms_cxr",
    "csv": "medground.datasets.ms_cxr:read_ms_cxr",
    "nih": "medground.datasets.nih:read_nih",
    "vindr": "medground.datasets.vindr:read_vindr",
    "phantoms": "medground.datasets.phantoms:read_phantoms",
}


def reader(name: str) -> Callable[..., Any]:
    module, _, function = DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def load_dataset(*args: Any, **kwargs: Any) -> Any:
    from medground.datasets.base import load_dataset as load

    return load(*args, **kwargs)
