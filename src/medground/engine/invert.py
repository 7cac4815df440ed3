"""DDIM inversion that runs only the work the recorded window needs, on any backbone.

The unconditional trajectory (guidance 0) is shared by every phrase of an image and stops at the end
of the window; conditional passes run only inside the window, one batch for all phrases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from medground.backbones.base import Backbone
from medground.config import GroundingConfig
from medground.engine.recorder import CrossAttentionRecorder
from medground.engine.schedule import inversion_step, inversion_timesteps
from medground.errors import ConfigError
from medground.text import PhraseTokens, token_weights


@dataclass(frozen=True)
class WindowLatents:
    """The inverted latents at the recorded grid positions: ``latents[step, image]`` at ``timesteps[step]``."""

    timesteps: tuple[int, ...]
    latents: torch.Tensor
    """(steps, images, C, h, w)"""

    def select(self, images: Sequence[int]) -> WindowLatents:
        return WindowLatents(self.timesteps, self.latents[:, list(images)])

    @staticmethod
    def concat(parts: Sequence[WindowLatents]) -> WindowLatents:
        return WindowLatents(parts[0].timesteps, torch.cat([p.latents for p in parts], dim=1))


@dataclass
class RecordedAttention:
    """Per-layer sums of normalised phrase maps over the window, (P, h, w) each."""

    per_layer: dict[str, torch.Tensor]
    steps: int
    conditional_evaluations: int
    peak_bytes: int


def window_grid(backbone: Backbone, config: GroundingConfig) -> list[int]:
    """Timesteps of the grid positions the engine must visit (0 .. window stop - 1); checks the window fits."""
    grid = inversion_timesteps(backbone.noise_schedule.num_train_timesteps, config.inference_steps,
                               config.timestep_spacing)
    start, stop = config.window
    if stop > len(grid):
        raise ConfigError(f"window [{start}, {stop}) runs past the {len(grid)}-step inversion grid of "
                          f"inference_steps={config.inference_steps}")
    return grid[:stop]


def unconditional_evaluations(config: GroundingConfig) -> int:
    """UNet evaluations per image to reach the window's last latent (positions 0 .. stop - 2)."""
    return config.window[1] - 1


@torch.no_grad()
def invert_to_window(backbone: Backbone, latents: torch.Tensor, config: GroundingConfig,
                     progress: bool = False) -> WindowLatents:
    """Invert a batch of latents with the unconditional prediction, keeping only the window's latents."""
    grid = window_grid(backbone, config)
    start, stop = config.window
    schedule = backbone.noise_schedule
    alphas = schedule.alphas_cumprod().to(latents.device)
    uncond = backbone.embed_text([config.unconditional_prompt])
    uncond = uncond.expand(latents.shape[0], *uncond.shape[1:])
    kept: list[torch.Tensor] = []
    latent = latents
    for position in tqdm(range(stop), desc="inversion", disable=not progress, leave=False):
        timestep = grid[position]
        if position >= start:
            kept.append(latent)
        if position + 1 < stop:
            prediction = backbone.predict(latent, timestep, uncond)
            latent = inversion_step(latent, prediction, alphas[timestep], alphas[grid[position + 1]],
                                    schedule.prediction_type)
    return WindowLatents(timesteps=tuple(grid[start:stop]), latents=torch.stack(kept))


@torch.no_grad()
def record_attention(backbone: Backbone, window: WindowLatents, image_index: Sequence[int],
                     phrases: Sequence[PhraseTokens], config: GroundingConfig,
                     batch_limit: int | None = None) -> RecordedAttention:
    """Run the conditional passes of all (image, phrase) pairs: every pass holds all pairs at one or more window
    steps (as many as fit in ``batch_limit`` UNet batch elements, at least one; each element at its own timestep)."""
    context = backbone.embed_text([p.phrase for p in phrases])
    weights = token_weights(phrases, context.shape[1])
    index = torch.as_tensor(list(image_index), dtype=torch.long, device=window.latents.device)
    per_pass = max(1, (batch_limit or len(phrases)) // len(phrases))
    with CrossAttentionRecorder(backbone, config.cross_attention_layers, weights,
                                config.normalise_each_map) as recorder:
        for start in range(0, len(window.timesteps), per_pass):
            steps = range(start, min(start + per_pass, len(window.timesteps)))
            batch = torch.cat([window.latents[step][index] for step in steps])
            timesteps = torch.tensor([window.timesteps[step] for step in steps], device=batch.device)
            timesteps = timesteps.repeat_interleave(len(phrases))
            contexts = context.repeat(len(steps), 1, 1)
            recorder.conditional_pass(lambda: backbone.predict(batch, timesteps, contexts),  # noqa: B023
                                      steps=len(steps))
    return RecordedAttention(per_layer=recorder.sums, steps=recorder.steps,
                             conditional_evaluations=recorder.steps * len(phrases), peak_bytes=recorder.peak_bytes)
