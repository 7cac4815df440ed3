"""The conditional passes: phrase-token attention recorded over the window, for all (image, phrase) pairs at once.

``record_attention`` runs every phrase of every image at one or more recorded positions per batch, each pass cut
short after the last recorded layer. With BBM it also keeps the attention to the start token at every grid position
(the image bias), and ``text_only_attention`` runs the text-only generation BBM's text bias comes from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from medground.backbones.base import Backbone
from medground.config import GroundingConfig
from medground.engine.invert import WindowLatents, grid, position_noise
from medground.engine.recorder import AttentionRecorder
from medground.engine.schedule import ddim_step
from medground.text import PhraseTokens, token_weights


@dataclass
class RecordedAttention:
    """Per-layer weighted sums of the phrase maps over the window, (P, side, side) each, and what BBM needs."""

    per_layer: dict[str, torch.Tensor]
    total_weight: float
    conditional_evaluations: int
    peak_bytes: int
    image_bias: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """BBM: per layer, the start token's maps at every grid position (ascending noise)."""
    text_bias: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """BBM: per layer, the phrase maps of the text-only generation at every grid position (ascending noise)."""


def step_weights(config: GroundingConfig, timesteps: Sequence[int], window: Sequence[int]) -> list[float]:
    """Weight of each recorded timestep in the activation map: the configured step weight inside the window, 0
    outside it (BBM records every position, but only the window makes the map).

    Args:
        config: its ``step_weights`` (None: 1 at every window position).
        timesteps: the recorded timesteps, in recording order.
        window: the window's timesteps in order; ``config.step_weights`` pairs with them.
    """
    weights = config.step_weights or (1.0,) * len(window)
    by_timestep = dict(zip(window, weights))
    return [by_timestep.get(t, 0.0) for t in timesteps]


@torch.no_grad()
def record_attention(backbone: Backbone, latents: WindowLatents, image_index: Sequence[int],
                     phrases: Sequence[PhraseTokens], config: GroundingConfig,
                     batch_limit: int | None = None) -> RecordedAttention:
    """Run the conditional passes of all (image, phrase) pairs: every pass holds all pairs at one or more recorded
    positions (as many as fit in ``batch_limit`` UNet batch elements, at least one; each element at its own
    timestep), since on a CPU or a large GPU a few large batches beat many small ones.

    Args:
        backbone: the model whose cross-attention is recorded.
        latents: every image's window latents, (steps, images, C, h, w).
        image_index: for each phrase, the index of its image in ``latents``.
        phrases: the P tokenised phrases, one per (image, phrase) pair, in the order of ``image_index``.
        config: a resolved config (layers, step weights, window, normalisation, refinement, BBM).
        batch_limit: UNet batch elements per pass; None: one window step per pass.

    Returns:
        RecordedAttention: per layer the step-weighted (P, side, side) sum, and with BBM the image and text biases.
    """
    context = backbone.embed_text([p.phrase for p in phrases])
    weights = token_weights(phrases, context.shape[1])
    index = torch.as_tensor(list(image_index), dtype=torch.long, device=latents.latents.device)
    start, stop = config.window
    window = grid(backbone, config)[start:stop]
    weight_of_step = step_weights(config, latents.timesteps, window)
    per_pass = max(1, (batch_limit or len(index)) // len(index))
    with AttentionRecorder(backbone, config.cross_attention_layers, weights, config.normalise_each_map,
                           config.self_attention_power, bias_token=0 if config.bbm else None) as recorder:
        for first in range(0, len(latents.timesteps), per_pass):
            steps = range(first, min(first + per_pass, len(latents.timesteps)))
            batch = torch.cat([latents.latents[step][index] for step in steps])
            timesteps = torch.tensor([latents.timesteps[step] for step in steps], device=batch.device)
            pass_context = context.repeat(len(steps), 1, 1)
            recorder.record_pass(
                lambda: backbone.predict(batch, timesteps.repeat_interleave(len(index)), pass_context),  # noqa: B023
                [weight_of_step[step] for step in steps])
    recorded = RecordedAttention(per_layer=recorder.sums, total_weight=recorder.total_weight,
                                 conditional_evaluations=recorder.passes * len(phrases),
                                 peak_bytes=recorder.peak_bytes, image_bias=recorder.bias)
    if config.bbm:
        recorded.text_bias = text_only_attention(backbone, phrases, config, latents.latents.shape[2:])
        recorded.conditional_evaluations += 2 * len(latents.timesteps) * len(phrases)
    return recorded


@torch.no_grad()
def text_only_attention(backbone: Backbone, phrases: Sequence[PhraseTokens], config: GroundingConfig,
                        latent_shape: Sequence[int]) -> dict[str, list[torch.Tensor]]:
    """BBM's text bias: each phrase generates an image from fixed noise (DDIM, eta 0, classifier-free guidance
    ``guidance_scale``) and the phrase-token attention of its conditional half is kept at every step.

    Args:
        backbone: the model that generates.
        phrases: the P tokenised phrases; each generates its own image.
        config: its grid (every position, noisiest first), ``noise_seed``, ``guidance_scale`` and layers.
        latent_shape: one latent's shape, (C, h, w).

    Returns:
        Per layer, the raw (P, side, side) phrase maps at every grid position, ascending noise (as the image bias).
    """
    device = backbone.device
    count = len(phrases)
    cond = backbone.embed_text([p.phrase for p in phrases])
    uncond = backbone.embed_text([config.unconditional_prompt]).expand_as(cond)
    context = torch.cat([uncond, cond])
    timesteps = grid(backbone, config)
    alphas = backbone.noise_schedule.alphas_cumprod().to(device)
    latent = position_noise(config.noise_seed, -1, latent_shape, device).expand(count, *latent_shape)
    weights = token_weights(phrases, cond.shape[1])
    with AttentionRecorder(backbone, config.cross_attention_layers, weights, normalise_each_map=False,
                           keep_steps=True) as recorder:
        for position in reversed(range(len(timesteps))):
            timestep = timesteps[position]
            pair = torch.cat([latent, latent])
            output = recorder.record_pass(lambda: backbone.predict(pair, timestep, context),  # noqa: B023
                                          weights=(0.0,), rows=slice(count, 2 * count), cut_off=False)
            unconditional, conditional = output.chunk(2)
            guided = unconditional + config.guidance_scale * (conditional - unconditional)
            alpha_next = alphas[timesteps[position - 1]] if position else alphas[0]
            latent = ddim_step(latent, guided, alphas[timestep], alpha_next, backbone.noise_schedule.prediction_type)
    return {path: maps[::-1] for path, maps in recorder.steps.items()}  # ascending noise, as the image bias
