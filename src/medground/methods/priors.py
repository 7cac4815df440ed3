"""Position-only baselines: they look at no pixel and read no phrase.

``uniform``: every pixel 1. ``centre``: an isotropic Gaussian centred on the image, sigma = a quarter of the shorter
side, peak 1. ``prior``: the mean ground-truth box mask of the phantom validation seeds (the best a method can do
from finding positions alone in the toy world; on other images it is resized to theirs). They cover the whole
original image (no crop, no NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from medground.datasets.base import Sample


class _PositionPrior:
    """A baseline that needs no model and no options."""

    name: str

    @classmethod
    def from_options(cls, name: str, options: object) -> _PositionPrior:
        return cls()


class UniformMethod(_PositionPrior):
    """Every pixel 1: the floor any method must beat."""

    name = "uniform"

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """A map of ones of each sample's size."""
        return [np.ones((s.height, s.width), dtype=np.float32) for s in samples]


def centre_gaussian(width: int, height: int) -> np.ndarray:
    """A (height, width) isotropic Gaussian on the image's centre, sigma a quarter of the shorter side, peak 1."""
    sigma = min(width, height) / 4
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.exp(-((xx - (width - 1) / 2) ** 2 + (yy - (height - 1) / 2) ** 2) / (2 * sigma**2)).astype(np.float32)


class CentreMethod(_PositionPrior):
    """A centred Gaussian: what a bias towards the middle of the chest alone achieves."""

    name = "centre"

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """``centre_gaussian`` of each sample's size."""
        return [centre_gaussian(s.width, s.height) for s in samples]


@lru_cache(maxsize=1)
def phantom_box_prior() -> np.ndarray:
    """Mean box mask over the phantom validation seeds, peak 1 (64 x 64)."""
    from medground.datasets.phantoms import SIZE, VALIDATION_SEEDS, generate_phantom
    from medground.metrics import box_union_mask

    total = np.zeros((SIZE, SIZE), dtype=np.float64)
    for seed in VALIDATION_SEEDS:
        for finding in generate_phantom(seed).findings:
            total += box_union_mask((SIZE, SIZE), [finding.box])
    return (total / total.max()).astype(np.float32)


class PhantomBoxPrior(_PositionPrior):
    """The mean box mask of the validation phantoms: the best that finding positions alone allow in the toy world."""

    name = "prior"

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """The prior, resized (bilinear) to each sample's size when that is not 64 x 64."""
        from PIL import Image

        prior = phantom_box_prior()
        maps = []
        for sample in samples:
            if (sample.height, sample.width) == prior.shape:
                maps.append(prior)
            else:
                maps.append(np.asarray(Image.fromarray(prior).resize((sample.width, sample.height), Image.BILINEAR)))
        return maps
