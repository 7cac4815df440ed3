"""Datasets for evaluation; each reader yields the same ``Sample`` record (see ``base``).

The registry names itself here without importing any reader, so listing the choices costs nothing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medground.errors import ConfigError, DatasetError

if TYPE_CHECKING:
    from medground.datasets.base import DatasetLoad

DATASETS: dict[str, str] = {
    "ms-cxr": "medground.datasets.ms_cxr:read_ms_cxr",
    "csv": "medground.datasets.ms_cxr:read_ms_cxr",
    "nih": "medground.datasets.nih:read_nih",
    "vindr": "medground.datasets.vindr:read_vindr",
    "phantoms": "medground.datasets.phantoms:read_phantoms",
}
GENERATED = ("phantoms",)
"""Datasets made from seeds (``seed``, ``n``), not read from files (``root``, ``csv``)."""
DEFAULT_PHANTOMS = 40


def reader(name: str) -> Any:
    """The reader function of dataset ``name``, imported now (listing ``DATASETS`` imports no reader)."""
    module, _, function = DATASETS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def load_dataset(name: str, root: Path | None = None, csv: Path | None = None, seed: int | None = None,
                 n: int | None = None, default_seed: int = 0) -> DatasetLoad:
    """Read a dataset by name, validate every row and apply the paper's crop filter.

    Args:
        name: a key of ``DATASETS``.
        root: image root of a file dataset (required for them).
        csv: its annotation file (default: looked up in ``root``).
        seed: first seed of a generated dataset (default ``default_seed``).
        n: how many to generate (default 40).
        default_seed: the seed a caller's purpose implies (held-out seeds to evaluate, validation seeds to sweep).

    Options of the other kind of dataset are refused, not ignored.
    """
    from medground.datasets.base import PROTOCOL_CROP, apply_crop_filter

    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
    if name in GENERATED:
        if root is not None or csv is not None:
            raise ConfigError(f"--dataset {name} generates its images; --root and --csv are for file datasets")
        seed = default_seed if seed is None else seed
        n = DEFAULT_PHANTOMS if n is None else n
        load = reader(name)(seed=seed, n=n)
        load.source = {"dataset": name, "root": None, "csv": None, "seed": seed, "n": n}
    else:
        if seed is not None or n is not None:
            raise ConfigError(f"--seed and --n are for --dataset {' or '.join(GENERATED)}; to evaluate part of "
                              f"{name} use --limit")
        if root is None:
            raise ConfigError(f"--dataset {name} needs --root")
        for what, given in (("dataset root", root), ("dataset CSV", csv)):
            try:
                if given is not None:
                    Path(given).exists()
            except OSError as exc:  # a name too long for the file system (Python < 3.12 raises)
                raise DatasetError(f"cannot open {what} {str(given)[:200]}: {exc.strerror or exc}") from None
        if not Path(root).is_dir():
            raise DatasetError(f"dataset root not found: {root}")
        load = reader(name)(Path(root), csv)
        load.source = {"dataset": name, "root": str(root), "csv": str(csv) if csv else None, "seed": None, "n": None}
    return apply_crop_filter(load, PROTOCOL_CROP)
