"""The deterministic DDIM step between two noise levels: pure math on tensors.

Upward (inversion) it is MONAI's ``DDIMScheduler.reversed_step``, which the official code ran; downward (BBM's
text-only generation) it is the usual eta = 0 DDIM update. Alphas come from the backbone's ``NoiseSchedule`` in
float32. The timestep grids are in ``config.grid_timesteps``.
"""

from __future__ import annotations

import torch

from medground.backbones.base import PredictionType


def ddim_step(latent: torch.Tensor, model_output: torch.Tensor, alpha: torch.Tensor, alpha_next: torch.Tensor,
              prediction_type: PredictionType) -> torch.Tensor:
    """From noise level ``alpha`` to ``alpha_next`` (either direction), eta = 0, no clipping.

    Args:
        latent: z at noise level ``alpha``.
        model_output: the UNet's prediction at ``latent``, of the same shape.
        alpha: alpha-bar (the cumulative product of 1 - beta) of the current timestep.
        alpha_next: alpha-bar of the timestep to step to: noisier when inverting, cleaner when generating.
        prediction_type: what ``model_output`` is: ``epsilon`` or ``v_prediction``.

    Returns:
        sqrt(alpha_next) x0 + sqrt(1 - alpha_next) eps, with x0 and eps recovered from the prediction.
    """
    beta = 1 - alpha
    if prediction_type == "v_prediction":
        x0 = alpha**0.5 * latent - beta**0.5 * model_output
        eps = alpha**0.5 * model_output + beta**0.5 * latent
    else:
        x0 = (latent - beta**0.5 * model_output) / alpha**0.5
        eps = model_output
    return alpha_next**0.5 * x0 + (1 - alpha_next) ** 0.5 * eps
