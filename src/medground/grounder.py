"""The public entry point: ground phrases in images with a latent diffusion model."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medground.backbones.base import Backbone
from medground.config import PRECISIONS, GroundingConfig, ModelFacts, resolve
from medground.engine.batching import DEFAULT_BATCH_SIZE
from medground.engine.invert import WindowLatents, unconditional_evaluations, window_latents
from medground.engine.record import record_attention
from medground.errors import ConfigError, ModelOutputError, PhraseError
from medground.geometry import Geometry, PreparedImage, prepare_image
from medground.images import ImageInput
from medground.readout.aggregate import average_attention_maps
from medground.readout.bbm import merge_biases
from medground.readout.boxes import boxes_from_mask
from medground.readout.maps import resize_square
from medground.readout.threshold import smooth_and_threshold
from medground.results import GroundingResult
from medground.text import phrase_tokens

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""Precisions (``config.PRECISIONS``): ``fp32`` is strict IEEE float32 (TF32 off on CUDA: PyTorch lets cuDNN
convolutions use TF32 by default, and over the paper's 180 inversion steps that moved Otsu boundaries: max |diff|
0.45 against the reference on an H200, 6e-7 with TF32 off). ``tf32`` allows TF32 in convolutions and matmuls;
``bf16`` / ``fp16`` run the networks under autocast."""


def resolve_config(model: Backbone, config: GroundingConfig | str | None = None,
                   overrides: dict[str, Any] | None = None) -> GroundingConfig:
    """A preset (or config) and overrides resolved against ``model`` once: its family's and its directory's defaults
    fill what they leave open, and every setting is checked against the model (layers, grid, window, prompt length)
    before any UNet work. A resolved config resolves to itself, so runs pass the result on, never a preset name.

    Args:
        model: the loaded model the config will run on.
        config: a preset name (None: ``paper``) or a GroundingConfig.
        overrides: setting names to values, winning over the preset and the model's defaults.

    Raises:
        ConfigError: overrides that are not a dict of names, a setting the model cannot run (``config.resolve``), or
            an ``unconditional_prompt`` longer than the text encoder takes.
    """
    if overrides is not None and (not isinstance(overrides, dict) or
                                  not all(isinstance(key, str) for key in overrides)):
        raise ConfigError(f"overrides must be a dict of setting names to values, got {overrides!r}")
    facts = ModelFacts(model.noise_schedule.num_train_timesteps, tuple(model.attention_layers()),
                       model.latent_side, model.attention_grid_sides)
    resolved = resolve(model.grounding_defaults(), config, overrides, facts)
    prompt_tokens = len(model.tokenizer(resolved.unconditional_prompt, truncation=False)["input_ids"])
    if prompt_tokens > model.tokenizer.model_max_length:
        raise ConfigError(f"unconditional_prompt has {prompt_tokens} tokens, but the text encoder takes at most "
                          f"{model.tokenizer.model_max_length}")
    return resolved


class Grounder:
    """Grounds phrases with a frozen LDM: ``Grounder(model, "paper").ground(image, phrases)``.

    ``config``: a preset name (default ``paper``) or a GroundingConfig; settings it leaves unset come from the model
    (its family's defaults and its directory's ``grounding_defaults``); ``overrides`` win over both. The resolved
    settings are checked against the model (layers, grid, window) here, before any UNet work.

    The unconditional trajectory inside the window is cached per image (content hash + model + the
    settings that shape it), so a later query on the same image runs only the conditional passes.

    Args:
        model: a loaded model, or a name, folder or hub id (then loaded on the CPU, as ``load_model`` does).
        config: a preset name (default ``paper``) or a GroundingConfig (a resolved one, e.g. a run's recorded
            ``config``, resolves to itself).
        overrides: settings that win over the preset and the model's defaults, e.g. ``{"threshold": "gmm"}``.
        progress: show a progress bar over the inversion steps.
        batch_size: images per inversion batch, and UNet batch elements per conditional pass (several window
            steps share a pass when the phrases leave room).
        precision: ``fp32`` (default, exact), or on CUDA the faster ``tf32``, ``bf16``, ``fp16`` (``AUTOCAST``).
        cache_size: image trajectories kept for later queries (0: none).
        compile: run the unconditional trajectory through a compiled UNet (``Backbone.compiled``; the first batch
            of each shape pays the compile time).
    """

    def __init__(self, model: Backbone | str | Path, config: GroundingConfig | str | None = None,
                 overrides: dict[str, Any] | None = None, progress: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "fp32", cache_size: int = 64,
                 compile: bool = False) -> None:
        if not isinstance(model, Backbone):  # a name, folder or hub id: loaded on the CPU, as load_model does
            from medground.loading import load_model

            model = load_model(model)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and model.device.type != "cuda":
            raise ConfigError(f"precision {precision!r} needs a CUDA device; the model is on {model.device}")
        for name, value, least in (("batch_size", batch_size, 1), ("cache_size", cache_size, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
        self.model = model
        self.config = resolve_config(model, config, overrides)
        self.progress = progress
        self.batch_size = batch_size
        self.precision = precision
        self.cache_size = cache_size
        self.compile = compile
        self._trajectories: OrderedDict[str, WindowLatents] = OrderedDict()
        self.unet_evaluations = {"unconditional": 0, "conditional": 0}
        """Running count of UNet evaluations (batch elements) done by this grounder."""

    def ground(self, image: ImageInput, phrases: str | Sequence[str]) -> list[GroundingResult]:
        """All phrases of one image share one inversion; their conditional passes run as one batch.

        Args:
            image: a path, PIL image or (H, W) array (``images.read_image``), or a PreparedImage made for this
                model's input size.
            phrases: one phrase or a list of them, tokenised by the config's ``token_rule``.

        Returns:
            One GroundingResult per phrase, in order, with heatmap, mask and boxes in the original image's pixels.

        Raises:
            ImageError: an image that cannot be read, or was prepared for another input size.
            PhraseError: a phrase that is empty, longer than the text encoder takes, or holds its special tokens.
            ModelOutputError: NaN or infinite attention (no map is returned rather than a blank one).
        """
        return self.ground_many([(image, _phrase_list(phrases))])[0]

    def ground_many(self, items: Sequence[tuple[ImageInput | PreparedImage, Sequence[str]]],
                    reduce: Callable[[GroundingResult], Any] | None = None) -> list[list[Any]]:
        """Several images, each with its phrases: uncached trajectories run in batches of ``batch_size``.

        Args:
            items: (image, phrases) pairs, each as ``ground`` takes them.
            reduce: applied to each result as soon as it is made, and only what it returns is kept: a dataset run
                then holds one full-size map at a time, not one per phrase of the call.

        Returns:
            Per item, its GroundingResults (or what ``reduce`` made of them) in phrase order; the errors are those
            of ``ground``.
        """
        started = time.perf_counter()
        counts_before = dict(self.unet_evaluations)
        size = self.model.image_size
        rule = self.config.token_rule
        tokens = [[phrase_tokens(self.model.tokenizer, p, rule) for p in _phrase_list(phrases)] for _, phrases in items]
        prepared = [prepare_image(image, size) for image, _ in items]
        geometries = [p.geometry for p in prepared]
        inputs = [p.model_input for p in prepared]
        image_index = [i for i, image_tokens in enumerate(tokens) for _ in image_tokens]
        flat_tokens = [t for image_tokens in tokens for t in image_tokens]
        if not flat_tokens:
            return [[] for _ in items]
        with self._numerics():
            window = self.window_latents(inputs)
            inverted = time.perf_counter()
            recorded = record_attention(self.model, window, image_index, flat_tokens, self.config, self.batch_size)
        self.unet_evaluations["conditional"] += recorded.conditional_evaluations
        recorded_at = time.perf_counter()
        maps = self._activation(recorded).numpy()
        if not np.isfinite(maps).all():
            raise ModelOutputError(f"model {self.model.name!r} produced NaN or infinite attention; its weights or "
                                   "inputs are broken (no map is returned rather than a blank one)")
        timings = {"inversion": inverted - started, "conditional": recorded_at - inverted}
        evaluations = {kind: self.unet_evaluations[kind] - counts_before[kind] for kind in counts_before}
        results: list[list[Any]] = [[] for _ in items]
        for row, (image_number, phrase) in enumerate(zip(image_index, flat_tokens)):
            result = self._finish(phrase.phrase, maps[row], geometries[image_number], timings)
            result.unet_evaluations, result.recorded_attention_bytes = dict(evaluations), recorded.peak_bytes
            results[image_number].append(reduce(result) if reduce is not None else result)
        return results

    def _activation(self, recorded) -> torch.Tensor:
        """The (P, S, S) map before smoothing: the weighted mean of the recorded maps, BBM-merged if asked."""
        config = self.config
        side = config.upsample_size or self.model.image_size
        weights = dict(zip(config.cross_attention_layers, config.layer_weights)) if config.layer_weights else None
        if not config.bbm:
            return average_attention_maps(recorded.per_layer, recorded.total_weight, side, config.upsample_mode,
                                          weights)
        latent = self.model.latent_side
        activation = average_attention_maps(recorded.per_layer, recorded.total_weight, latent, config.upsample_mode,
                                            weights)
        merged = merge_biases(activation, recorded.image_bias, recorded.text_bias)
        return merged if side == latent else resize_square(merged, side, "bilinear")

    def is_cached(self, image: ImageInput | PreparedImage) -> bool:
        """Whether ``image``'s trajectory is cached (a query on it then runs only the conditional passes).

        Args:
            image: as ``ground`` takes it; it is read and resized to find its cache key, never inverted.
        """
        return self._trajectory_key(prepare_image(image, self.model.image_size).model_input) in self._trajectories

    @contextlib.contextmanager
    def _numerics(self) -> Iterator[None]:
        """The numerics ``precision`` names, for this call only (the global TF32 flags are restored after)."""
        if self.model.device.type != "cuda":
            yield
            return
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        tf32 = self.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            if self.precision in ("bf16", "fp16"):
                with torch.autocast(device_type="cuda", dtype=AUTOCAST[self.precision]):
                    yield
            else:
                yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def _trajectory_key(self, model_input: torch.Tensor) -> str:
        digest = hashlib.sha256(model_input.numpy().tobytes()).hexdigest()
        c = self.config
        return (f"{digest}|{self.model.name}|{id(self.model)}|{c.inference_steps}|{c.timestep_spacing}|"
                f"{c.timestep_offset}|{c.window}|{c.noising}|{c.noise_seed}|{c.bbm}|{c.unconditional_prompt!r}|"
                f"{self.precision}")

    def window_latents(self, inputs: list[torch.Tensor]) -> WindowLatents:
        """Window latents of every input, from the cache or by batched inversion of the missing ones."""
        keys = [self._trajectory_key(x) for x in inputs]
        missing = list(dict.fromkeys(k for k in keys if k not in self._trajectories))
        input_of = dict(zip(keys, inputs))  # equal keys mean equal content
        fresh: dict[str, WindowLatents] = {}
        for begin in range(0, len(missing), self.batch_size):
            chunk = missing[begin : begin + self.batch_size]
            batch = torch.cat([input_of[k] for k in chunk]).to(self.model.device, non_blocking=True)
            window = window_latents(self._inversion_model(), self.model.encode_images(batch), self.config,
                                    self.progress)
            self.unet_evaluations["unconditional"] += unconditional_evaluations(self.config) * len(chunk)
            fresh.update({key: window.select([i]) for i, key in enumerate(chunk)})
        parts = [fresh[k] if k in fresh else self._trajectories[k] for k in keys]
        for key, window in fresh.items():
            self._trajectories[key] = window
        for key in keys:
            self._trajectories.move_to_end(key)
        while len(self._trajectories) > self.cache_size:
            self._trajectories.popitem(last=False)
        return WindowLatents.concat(parts)

    def _inversion_model(self) -> Backbone:
        """The model the unconditional trajectory runs on: with ``compile``, the one whose UNet is compiled.
        Conditional passes always run eagerly: capture hooks into the UNet and cuts each pass short."""
        return self.model.compiled() if self.compile else self.model

    def _finish(self, phrase: str, attention: np.ndarray, geometry: Geometry,
                timings: dict[str, float]) -> GroundingResult:
        started = time.perf_counter()
        model_map, model_mask = smooth_and_threshold(attention, self.config.gaussian_sigma, self.config.threshold)
        if model_map.shape[0] != geometry.size:
            model_map = _resized(model_map, geometry.size, "bilinear")
            model_mask = _resized(model_mask.astype(np.float32), geometry.size, "nearest") > 0.5
        heatmap = geometry.to_original(model_map.astype(np.float32), self.config.back_projection)
        mask = geometry.to_original(model_mask.astype(np.float32), self.config.back_projection) > 0.5
        return GroundingResult(phrase=phrase, heatmap=heatmap, mask=mask, boxes=boxes_from_mask(mask, heatmap),
                               config=self.config, model_heatmap=model_map.astype(np.float32),
                               flat=not bool(model_map.max() > 0),
                               timings={**timings, "postprocess": time.perf_counter() - started})


def _phrase_list(phrases: str | Sequence[str]) -> list[str]:
    if isinstance(phrases, str):
        return [phrases]
    if not isinstance(phrases, Sequence):
        raise PhraseError(f"phrases must be a string or a list of strings, got {type(phrases).__name__}")
    return list(phrases)


def _resized(values: np.ndarray, size: int, mode: str) -> np.ndarray:
    """A square map computed at ``upsample_size`` resized to the model's input size."""
    return resize_square(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None], size, mode)[0].numpy()
