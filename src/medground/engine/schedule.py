"""Timestep grids and the DDIM inversion step: pure math on tensors.

The step is MONAI's ``DDIMScheduler.reversed_step`` (what the official code ran), written out so that every
family uses the same math; alphas come from the backbone's ``NoiseSchedule`` in float32.
"""

from __future__ import annotations

import torch

from medground.backbones.base import PredictionType
from medground.errors import ConfigError


def inversion_timesteps(num_train_timesteps: int, inference_steps: int, spacing: str) -> list[int]:
    """Timesteps walked upward (x0 -> xT) by the inversion.

    ``trailing`` with integer ratio d = T // N gives {T-1, T-1-d, ...} reversed; for T=1000, N=300
    that is {0, 3, ..., 999}: 334 steps, the grid the official code actually ran.
    """
    if not 1 <= inference_steps <= num_train_timesteps:
        raise ConfigError(f"inference_steps must be in [1, {num_train_timesteps}], got {inference_steps}")
    ratio = num_train_timesteps // inference_steps
    if spacing == "trailing":
        return list(range(num_train_timesteps - 1, -1, -ratio))[::-1]
    if spacing == "leading":
        return [i * ratio for i in range(inference_steps)]
    raise ConfigError(f"timestep spacing must be 'trailing' or 'leading', got {spacing!r}")


def inversion_step(
    latent: torch.Tensor,
    model_output: torch.Tensor,
    alpha: torch.Tensor,
    alpha_next: torch.Tensor,
    prediction_type: PredictionType,
) -> torch.Tensor:
    """One deterministic DDIM step from noise level ``alpha`` up to ``alpha_next`` (eta = 0, no clipping)."""
    beta = 1 - alpha
    if prediction_type == "v_prediction":
        x0 = alpha**0.5 * latent - beta**0.5 * model_output
        eps = alpha**0.5 * model_output + beta**0.5 * latent
    else:
        x0 = (latent - beta**0.5 * model_output) / alpha**0.5
        eps = model_output
    return alpha_next**0.5 * x0 + (1 - alpha_next) ** 0.5 * eps
