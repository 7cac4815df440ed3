"""The latents at the recorded grid positions, by DDIM inversion (the paper) or by forward noising (G2G).

Inversion runs only the work the window needs: the unconditional trajectory (guidance 0) is shared by every phrase
of an image and stops at the end of the window. Forward noising runs no network at all: each recorded position gets
the clean latent noised to its timestep with noise drawn from ``noise_seed`` and the position alone, so an image's
latents never depend on which other images share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from medground.backbones.base import Backbone
from medground.config import GroundingConfig, grid_timesteps
from medground.engine.schedule import ddim_step


@dataclass(frozen=True)
class WindowLatents:
    """The latents at the recorded grid positions: ``latents[step, image]`` at ``timesteps[step]``."""

    timesteps: tuple[int, ...]
    latents: torch.Tensor
    """(steps, images, C, h, w)"""

    def select(self, images: Sequence[int]) -> WindowLatents:
        """The window of the images at batch indices ``images`` (the Grounder caches each image on its own)."""
        return WindowLatents(self.timesteps, self.latents[:, list(images)])

    @staticmethod
    def concat(parts: Sequence[WindowLatents]) -> WindowLatents:
        """Several windows joined along the image axis (cached and fresh images of one call); they must share the
        timesteps, which are taken from the first."""
        return WindowLatents(parts[0].timesteps, torch.cat([p.latents for p in parts], dim=1))


def grid(backbone: Backbone, config: GroundingConfig) -> list[int]:
    """The config's timestep grid on the model's training schedule (``config.grid_timesteps``), ascending noise."""
    return grid_timesteps(backbone.noise_schedule.num_train_timesteps, config.inference_steps,
                          config.timestep_spacing, config.timestep_offset)


def recorded_positions(config: GroundingConfig, grid_length: int) -> list[int]:
    """Grid positions that get a conditional pass: the window, or every position when BBM needs its image bias."""
    start, stop = config.window
    return list(range(grid_length)) if config.bbm else list(range(start, stop))


def unconditional_evaluations(config: GroundingConfig) -> int:
    """UNet evaluations per image to reach the window's last latent (positions 0 .. stop - 2); none when forward."""
    return config.window[1] - 1 if config.noising == "inversion" else 0


@torch.no_grad()
def window_latents(backbone: Backbone, latents: torch.Tensor, config: GroundingConfig,
                   progress: bool = False) -> WindowLatents:
    """The latents every conditional pass needs, made the way the config's ``noising`` says.

    Args:
        backbone: the model (its UNet runs the inversion; forward noising runs no network).
        latents: (images, C, h, w) scaled clean latents (``Backbone.encode_images``).
        config: a resolved config: its grid, window, noising and BBM decide which positions are returned.
        progress: show a progress bar over the inversion steps.

    Returns:
        WindowLatents of shape (steps, images, C, h, w): the window's positions, or with BBM (forward noising
        only) every grid position.
    """
    timesteps = grid(backbone, config)
    positions = recorded_positions(config, len(timesteps))
    if config.noising == "forward":
        return forward_noised(backbone, latents, config, [timesteps[p] for p in positions])
    return invert_to_window(backbone, latents, config, timesteps, progress)


def invert_to_window(backbone: Backbone, latents: torch.Tensor, config: GroundingConfig, timesteps: list[int],
                     progress: bool = False) -> WindowLatents:
    """Invert a batch of latents with the unconditional prediction, keeping only the window's latents.

    Args:
        backbone: the model whose unconditional prediction (``unconditional_prompt``, guidance 0) drives the steps.
        latents: (images, C, h, w) clean latents z_0.
        config: a resolved config; its window [start, stop) says which positions are kept and where to stop.
        timesteps: the whole grid (``grid``), ascending noise.
        progress: show a progress bar over the steps.

    Returns:
        WindowLatents of shape (stop - start, images, C, h, w), made with stop - 1 UNet evaluations per image.
    """
    start, stop = config.window
    schedule = backbone.noise_schedule
    alphas = schedule.alphas_cumprod().to(latents.device)
    uncond = backbone.embed_text([config.unconditional_prompt])
    uncond = uncond.expand(latents.shape[0], *uncond.shape[1:])
    kept: list[torch.Tensor] = []
    latent = latents
    for position in tqdm(range(stop), desc="inversion", disable=not progress, leave=False):
        timestep = timesteps[position]
        if position >= start:
            kept.append(latent)
        if position + 1 < stop:
            prediction = backbone.predict(latent, timestep, uncond)
            latent = ddim_step(latent, prediction, alphas[timestep], alphas[timesteps[position + 1]],
                                    schedule.prediction_type)
    return WindowLatents(timesteps=tuple(timesteps[start:stop]), latents=torch.stack(kept))


def position_noise(seed: int, timestep: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """The fixed noise of one timestep, the same for every image (independent of batch composition).

    Args:
        seed: the config's ``noise_seed``.
        timestep: the timestep the noise is for (BBM's text-only generation starts from timestep -1's).
        shape: one image's latent shape, (C, h, w).
        device: where the noise is returned; it is drawn on the CPU, so every device gets the same numbers.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + timestep)
    return torch.randn(tuple(shape), generator=generator).to(device)


def forward_noised(backbone: Backbone, latents: torch.Tensor, config: GroundingConfig,
                   timesteps: list[int]) -> WindowLatents:
    """z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps at each timestep (G2G re-noises the clean latent at every step).

    Args:
        backbone: the model; only its noise schedule is used.
        latents: (images, C, h, w) clean latents z_0.
        config: its ``noise_seed`` fixes eps (``position_noise``).
        timesteps: the timesteps to noise to, in the order returned.

    Returns:
        WindowLatents of shape (len(timesteps), images, C, h, w).
    """
    alphas = backbone.noise_schedule.alphas_cumprod().to(latents.device)
    noised = []
    for timestep in timesteps:
        noise = position_noise(config.noise_seed, timestep, latents.shape[1:], latents.device)
        noised.append(alphas[timestep].sqrt() * latents + (1 - alphas[timestep]).sqrt() * noise)
    return WindowLatents(timesteps=tuple(timesteps), latents=torch.stack(noised))
