"""The paper's method as an evaluation method: samples of one call that share an image share its inversion.

``untrained`` is the same pipeline on the same architecture with fresh random weights (the UNet and text encoder
rebuilt from their configurations; autoencoder and tokenizer kept), the control that shows what training adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medground.datasets.base import Sample
from medground.grounder import Grounder


class LdmMethod:
    """The paper's method behind the evaluation interface, so it is scored exactly as the baselines are."""

    def __init__(self, name: str, grounder: Grounder) -> None:
        self.name = name
        self.grounder = grounder

    @classmethod
    def from_options(cls, name: str, options) -> LdmMethod:
        """A Grounder on ``options.model`` (loaded unless it is a Backbone; for ``untrained`` with fresh UNet and
        text encoder weights) running ``options.config``."""
        from medground.backbones.base import Backbone
        from medground.loading import load_model

        model = options.model if isinstance(options.model, Backbone) else \
            load_model(options.model, device=options.device, text_encoder=options.text_encoder)
        if name == "untrained":
            model = model.untrained(options.untrained_seed)
        grounder = Grounder(model, options.config, precision=options.precision, batch_size=options.batch_size)
        return cls(name, grounder)

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """One original-size map per sample; samples of one image go in one ``ground_many`` item (one inversion)."""
        by_image: dict[str, list[int]] = {}
        for index, sample in enumerate(samples):
            by_image.setdefault(sample.image_key, []).append(index)
        items = [(samples[indices[0]].image, [samples[i].phrase for i in indices]) for indices in by_image.values()]
        maps: list[np.ndarray | None] = [None] * len(samples)
        for indices, results in zip(by_image.values(), self.grounder.ground_many(items)):
            for index, result in zip(indices, results):
                maps[index] = result.heatmap
        return maps  # type: ignore[return-value]
