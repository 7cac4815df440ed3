"""Grounding methods under one interface: a batch of samples in, one original-size heatmap per sample out.

``ldm``: the Grounder (phrases of the same image share one inversion). ``uniform``: every pixel 1.0.
``centre``: an isotropic Gaussian centred on the image with sigma = a quarter of the shorter side, peak 1.
Position priors cover the whole original image (no crop, no NaN). ``biovil`` / ``biovil-t``: the contrastive
baselines through hi-ml-multimodal (medground.biovil; optional extra ``medground[baselines]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from medground.datasets.base import Sample
from medground.errors import ConfigError


class GroundingMethod(Protocol):
    name: str

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """Original-size float maps (NaN where the method has no prediction), one per sample."""


class UniformMethod:
    name = "uniform"

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        return [np.ones((s.height, s.width), dtype=np.float32) for s in samples]


def centre_gaussian(width: int, height: int) -> np.ndarray:
    sigma = min(width, height) / 4
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.exp(-((xx - (width - 1) / 2) ** 2 + (yy - (height - 1) / 2) ** 2) / (2 * sigma**2)).astype(np.float32)


class CentreMethod:
    name = "centre"

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        return [centre_gaussian(s.width, s.height) for s in samples]


class LdmMethod:
    """The paper's method; samples of one call that share an image share its inversion."""

    name = "ldm"

    def __init__(self, grounder) -> None:
        self.grounder = grounder

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        by_image: dict[str, list[int]] = {}
        for index, sample in enumerate(samples):
            by_image.setdefault(str(sample.image_path), []).append(index)
        items = [(path, [samples[i].phrase for i in indices]) for path, indices in by_image.items()]
        maps: list[np.ndarray | None] = [None] * len(samples)
        for indices, results in zip(by_image.values(), self.grounder.ground_many(items)):
            for index, result in zip(indices, results):
                maps[index] = result.heatmap
        return maps  # type: ignore[return-value]


METHOD_NAMES = ("ldm", "uniform", "centre", "biovil", "biovil-t")


def make_method(name: str, model: str | None = None, preset: str = "paper", device: str = "cpu",
                text_encoder: str | None = None, precision: str = "fp32") -> GroundingMethod:
    """``model``: the LDM (directory or known name) for ``ldm``; for the BioViL variants an optional hub id or local
    copy of the weights repository (default: the official one)."""
    if name == "uniform":
        return UniformMethod()
    if name == "centre":
        return CentreMethod()
    if name == "ldm":
        from medground.grounder import Grounder
        from medground.models.ldm import load_model

        if model is None:
            raise ConfigError("--method ldm needs --model (a model directory or a known name)")
        return LdmMethod(Grounder(load_model(model, device=device, text_encoder=text_encoder), preset,
                                  precision=precision))
    if name in ("biovil", "biovil-t"):
        from medground.biovil import load_biovil

        return load_biovil(name, model, device)
    raise ConfigError(f"unknown method {name!r}; known: {list(METHOD_NAMES)}")
