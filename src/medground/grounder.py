"""The public entry point: ground phrases in images with a latent diffusion model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medground.config import GroundingConfig, preset
from medground.engine.invert import invert_to_window, record_attention
from medground.heatmap import average_attention_maps
from medground.images import Geometry, ImageInput, read_image
from medground.models.ldm import LatentDiffusionModel
from medground.postprocess import GroundedBox, boxes_from_mask, smooth_and_threshold
from medground.text import phrase_tokens


@dataclass
class GroundingResult:
    """Where one phrase sits in one image."""

    phrase: str
    heatmap: np.ndarray
    """float32 (H, W) in original pixels, NaN where the centre crop discarded the image."""
    mask: np.ndarray
    """bool (H, W): the Otsu foreground."""
    boxes: list[GroundedBox]
    config: GroundingConfig
    model_heatmap: np.ndarray
    """float32 (S, S): the final map in the model's square input."""
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "phrase": self.phrase,
            "image_size": {"width": int(self.heatmap.shape[1]), "height": int(self.heatmap.shape[0])},
            "boxes": [box.to_dict() for box in self.boxes],
            "timings_s": self.timings,
            "config": self.config.to_dict(),
        }


def resolve_config(model: LatentDiffusionModel, config: GroundingConfig | str | None) -> GroundingConfig:
    """A preset name (default ``paper``) gets the model's own defaults (layers, window) applied on top;
    an explicit GroundingConfig is used as given."""
    if isinstance(config, GroundingConfig):
        return config
    return preset(config or "paper").with_overrides(**_model_overrides(model))


def _model_overrides(model: LatentDiffusionModel) -> dict[str, Any]:
    overrides = dict(model.grounding_defaults)
    GroundingConfig.from_dict(overrides)  # validates the names and values
    if "cross_attention_layers" in overrides:
        overrides["cross_attention_layers"] = tuple(overrides["cross_attention_layers"])
    return overrides


class Grounder:
    """Grounds phrases with a frozen LDM: ``Grounder(model, "paper").ground(image, phrases)``."""

    def __init__(self, model: LatentDiffusionModel, config: GroundingConfig | str | None = None,
                 progress: bool = False) -> None:
        self.model = model
        self.config = resolve_config(model, config)
        self.progress = progress

    def ground(self, image: ImageInput, phrases: str | Sequence[str]) -> list[GroundingResult]:
        """All phrases of one image share one inversion; their conditional passes run as one batch."""
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        return self.ground_many([(image, phrases)])[0]

    def ground_many(self, items: Sequence[tuple[ImageInput, Sequence[str]]]) -> list[list[GroundingResult]]:
        """Several images, each with its phrases: the unconditional trajectories run as one batch."""
        started = time.perf_counter()
        size = self.model.image_size
        pixels = [read_image(image) for image, _ in items]
        tokens = [[phrase_tokens(self.model.tokenizer, p) for p in phrases] for _, phrases in items]
        if not any(tokens):
            return [[] for _ in items]
        geometries = [Geometry(width=p.shape[1], height=p.shape[0], size=size) for p in pixels]
        batch = torch.cat([g.to_model(p) for g, p in zip(geometries, pixels)]).to(self.model.device)
        latents = self.model.encode_images(batch)
        prepared = time.perf_counter()
        window = invert_to_window(self.model, latents, self.config, progress=self.progress)
        inverted = time.perf_counter()
        image_index = [i for i, image_tokens in enumerate(tokens) for _ in image_tokens]
        flat_tokens = [t for image_tokens in tokens for t in image_tokens]
        recorded = record_attention(self.model, window, image_index, flat_tokens, self.config)
        recorded_at = time.perf_counter()
        upsample = self.config.upsample_size or size
        maps = average_attention_maps(recorded.per_layer, recorded.steps, upsample).numpy()
        timings = {
            "prepare": prepared - started,
            "inversion": inverted - prepared,
            "conditional": recorded_at - inverted,
            "unet_evaluations_unconditional": float(window.unconditional_evaluations),
            "unet_evaluations_conditional": float(recorded.conditional_evaluations),
        }
        results: list[list[GroundingResult]] = [[] for _ in items]
        for row, (image_number, phrase) in enumerate(zip(image_index, flat_tokens)):
            results[image_number].append(self._finish(phrase.phrase, maps[row], geometries[image_number], timings))
        return results

    def _finish(self, phrase: str, attention: np.ndarray, geometry: Geometry,
                timings: dict[str, float]) -> GroundingResult:
        started = time.perf_counter()
        model_map, model_mask = smooth_and_threshold(attention, self.config.gaussian_sigma, self.config.threshold)
        if model_map.shape[0] != geometry.size:
            model_map = _resize_square(model_map, geometry.size, "bilinear")
            model_mask = _resize_square(model_mask.astype(np.float32), geometry.size, "nearest") > 0.5
        heatmap = geometry.to_original(model_map.astype(np.float32), self.config.back_projection)
        mask = geometry.to_original(model_mask.astype(np.float32), self.config.back_projection) > 0.5
        return GroundingResult(phrase=phrase, heatmap=heatmap, mask=mask, boxes=boxes_from_mask(mask, heatmap),
                               config=self.config, model_heatmap=model_map.astype(np.float32),
                               timings={**timings, "postprocess": time.perf_counter() - started})


def _resize_square(values: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize a square map computed at ``upsample_size`` to the model's input size."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None]
    options = {"align_corners": False} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode=mode, **options)[0, 0].numpy()
