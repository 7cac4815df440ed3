"""Noise schedule, timestep grids and the DDIM inversion step: pure math on tensors.

Kept in float32 exactly as MONAI's DDIMScheduler builds it, so the inverted latents agree with the
scheduler the official code used (its ``reversed_step``) to rounding error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from medground.errors import ConfigError

PredictionType = Literal["v_prediction", "epsilon"]


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule of a diffusion model (betas and what the network predicts)."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    prediction_type: PredictionType = "v_prediction"

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ConfigError(f"beta_schedule must be 'scaled_linear' or 'linear', got {self.beta_schedule!r}")
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ConfigError(f"prediction_type must be 'v_prediction' or 'epsilon', got {self.prediction_type!r}")

    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative products of (1 - beta_t), float32, length ``num_train_timesteps``."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2
        else:
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0)

    def to_dict(self) -> dict:
        return asdict(self)


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
