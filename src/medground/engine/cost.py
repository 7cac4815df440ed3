"""What a run will cost, said before it starts: UNet evaluations counted from the config, seconds from one timed
pass of the model on this machine. Long runs (a sweep, a toy table) are refused above a limit unless confirmed."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from medground.backbones.base import Backbone
from medground.config import GroundingConfig, grid_timesteps
from medground.engine.batching import DEFAULT_BATCH_SIZE
from medground.engine.invert import recorded_positions, unconditional_evaluations
from medground.errors import ConfigError

CONFIRM_SECONDS = 3600.0
"""Runs estimated to take longer than an hour here need ``--yes``."""


@dataclass(frozen=True)
class WorkEstimate:
    """UNet evaluations a run will do, and about how long they take on this machine."""

    unet_evaluations: int
    seconds: float

    def describe(self, what: str) -> str:
        return f"{what}: {self.unet_evaluations:,} UNet evaluations, about {_duration(self.seconds)} here"

    def check(self, what: str, limit: float | None, hint: str) -> None:
        """Refuse when the estimate is over ``limit`` seconds (None: no limit), naming the estimate and ``hint``."""
        if limit is not None and self.seconds > limit:
            raise ConfigError(f"{self.describe(what)}, over {_duration(limit)}; pass --yes to run it anyway, or "
                              f"{hint}")

    def __add__(self, other: WorkEstimate) -> WorkEstimate:
        return WorkEstimate(self.unet_evaluations + other.unet_evaluations, self.seconds + other.seconds)


def unet_evaluations(model: Backbone, config: GroundingConfig, images: int, phrases: int) -> int:
    """Evaluations to ground ``phrases`` phrases on ``images`` images with a resolved ``config``: the inversion per
    image, one conditional evaluation per phrase and recorded position, and BBM's text-only generation."""
    grid = grid_timesteps(model.noise_schedule.num_train_timesteps, config.inference_steps, config.timestep_spacing,
                          config.timestep_offset)
    per_phrase = len(recorded_positions(config, len(grid))) + (2 * len(grid) if config.bbm else 0)
    return images * unconditional_evaluations(config) + phrases * per_phrase


@torch.no_grad()
def seconds_per_evaluation(model: Backbone) -> float:
    """One UNet evaluation's share of a batched pass, timed on this machine (the faster of two passes)."""
    side, batch = model.latent_side, DEFAULT_BATCH_SIZE
    channels = model.encode_images(torch.zeros(1, 1, model.image_size, model.image_size, device=model.device)).shape[1]
    latents = torch.zeros(batch, channels, side, side, device=model.device)
    context = model.embed_text([""]).expand(batch, -1, -1)
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        model.predict(latents, 500 % model.noise_schedule.num_train_timesteps, context)
        timings.append(time.perf_counter() - started)
    return min(timings) / batch


def estimate(model: Backbone, config: GroundingConfig, images: int, phrases: int,
             per_evaluation: float | None = None) -> WorkEstimate:
    """The work of one grounding run; ``per_evaluation`` (seconds) is timed when not given."""
    count = unet_evaluations(model, config, images, phrases)
    seconds = per_evaluation if per_evaluation is not None else seconds_per_evaluation(model)
    return WorkEstimate(count, count * seconds)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
