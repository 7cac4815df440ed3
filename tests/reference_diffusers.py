"""A plain, slow re-implementation of the paper's algorithm on a diffusers pipeline, kept only to check the engine.

Everything is loaded with diffusers and transformers directly (not through medground's seam); all grid steps run with
``[uncond, cond]`` as a batch of two through MONAI's ``DDIMScheduler.reversed_step`` (the official step), every
``attn2`` layer stores its probabilities through its own processor at every step, and the selection (layers by path,
steps of the window, tokens between start and end) is made afterwards. Same math as ``reference_paper``: per-map
min-max, bilinear resize, mean, Gaussian 2.5, min-max, Otsu, NaN back-projection.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from monai.networks.schedulers import DDIMScheduler
from reference_paper import official_readout, preprocess
from transformers import CLIPTextModel, CLIPTokenizer


class StoringProcessor:
    """Explicit scaled-dot-product attention that keeps its softmax probabilities, (batch, heads, queries, keys)."""

    def __init__(self) -> None:
        self.stored: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, length, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        heads = attn.heads
        query = attn.to_q(hidden_states).reshape(batch, length, heads, -1).transpose(1, 2)
        key = attn.to_k(context).reshape(batch, context.shape[1], heads, -1).transpose(1, 2)
        value = attn.to_v(context).reshape(batch, context.shape[1], heads, -1).transpose(1, 2)
        probabilities = (query @ key.transpose(-1, -2) * attn.scale).softmax(dim=-1)
        self.stored.append(probabilities.detach().cpu())
        out = (probabilities @ value).transpose(1, 2).reshape(batch, length, -1)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


@torch.no_grad()
def reference_heatmap(folder, path, phrase: str, layers: list[str], num_timesteps: int = 300,
                      sigma: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(final model-space map after Otsu, original-size map with NaN padding) for a pipeline folder."""
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)

    image = preprocess(path, size)
    latent = vae.encode(image.repeat(1, 3, 1, 1) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    ids = tokenizer(["", phrase], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    embeds = text_encoder(ids)[0]

    scheduler = DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta",
                              beta_start=scheduler_config["beta_start"], beta_end=scheduler_config["beta_end"],
                              prediction_type=scheduler_config.get("prediction_type", "epsilon"), clip_sample=False)
    scheduler.set_timesteps(num_timesteps)
    ratio = 1000 // num_timesteps
    scheduler.timesteps = torch.from_numpy(np.round(np.arange(1000, 0, -ratio)).astype(np.int64) - 1)

    processors = {name: StoringProcessor() for name, _ in unet.named_modules() if name.endswith("attn2")}
    for name, processor in processors.items():
        unet.get_submodule(name).set_processor(processor)
    for t in scheduler.timesteps.flip(0):
        output = unet(torch.cat([latent] * 2), torch.Tensor((t,)).long(), encoder_hidden_states=embeds).sample
        uncond, _ = output.chunk(2)
        if t + ratio < 1000:
            latent, _ = scheduler.reversed_step(uncond, int(t), latent)

    token_count = len(tokenizer(phrase, max_length=tokenizer.model_max_length, truncation=True).input_ids)
    conditional = [torch.stack(processors[name].stored, -1)[1].mean(0) for name in layers]  # batch 1, heads averaged
    return official_readout(conditional, token_count, num_timesteps, size, path, sigma)
