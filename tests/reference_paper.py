"""A plain, slow re-implementation of the official algorithm (vios-s/ldm-phrase-grounding), kept only
to check the engine: all 334 grid steps, ``[uncond, cond]`` as a batch of two at every step through
MONAI's own ``DDIMScheduler.reversed_step``, every cross-attention layer recorded at every step, and
the selection (layer indices [3, 4, 6, 7], steps 120..179, tokens 1..len-2) made afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_multiotsu

OFFICIAL_LAYER_INDICES = [3, 4, 6, 7]


def preprocess(path, size: int) -> torch.Tensor:
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0)
    height, width = pixels.shape
    if width <= height:
        new_h, new_w = int(size * height / width), size
    else:
        new_h, new_w = size, int(size * width / height)
    resized = F.interpolate(pixels[None, None], size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = new_h // 2 - size // 2, new_w // 2 - size // 2
    return resized[..., top : top + size, left : left + size]


@torch.no_grad()
def reference_heatmap(model, path, phrase: str, num_timesteps: int = 300,
                      stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (final 512-space map after Otsu, original-size map with NaN padding).

    ``stats``, if given, receives the UNet evaluations (batch elements) and the bytes of stored attention.
    """
    unet, tokenizer = model.unet, model.tokenizer
    size = model.image_size
    image = preprocess(path, size)
    device = next(unet.parameters()).device
    latent = model.autoencoder.encode(image.to(device))[0] * model.latent_scale

    ids = tokenizer(["", phrase], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    embeds = model.text_encoder(ids.to(device))[0]

    schedule = model.noise_schedule
    scheduler = DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=schedule.beta_start,
                              beta_end=schedule.beta_end, prediction_type=schedule.prediction_type, clip_sample=False)
    scheduler.set_timesteps(num_timesteps)
    ratio = 1000 // num_timesteps
    scheduler.timesteps = torch.from_numpy(np.round(np.arange(1000, 0, -ratio)).astype(np.int64) - 1)

    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    for module in unet.modules():
        if hasattr(module, "use_flash_attention"):
            module.use_flash_attention = False
    recorded: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = []
    for index, layer in enumerate(layers):
        layer.save_attn = True
        hooks.append(layer.register_forward_hook(
            lambda module, _i, _o, index=index: recorded[index].append(module.att_mat.to("cpu", copy=True))))

    for t in scheduler.timesteps.flip(0):
        output = unet(torch.cat([latent] * 2), timesteps=torch.Tensor((t,)).long().to(device), context=embeds)
        uncond, cond = output.chunk(2)
        noise_pred = uncond + 0.0 * (cond - uncond)
        if t + ratio < 1000:  # the last step (t = 999) would index past the table; nothing uses it
            latent, _ = scheduler.reversed_step(noise_pred, int(t), latent)
    for hook in hooks:
        hook.remove()
    for layer in layers:
        layer.save_attn = False
    if stats is not None:
        stats["unet_evaluations"] = 2 * len(scheduler.timesteps)
        stats["attention_bytes"] = sum(m.numel() * m.element_size() for maps in recorded for m in maps)

    token_count = len(tokenizer(phrase, max_length=tokenizer.model_max_length, truncation=True).input_ids)
    conditional = [torch.stack(recorded[index], -1)[1, 0] for index in OFFICIAL_LAYER_INDICES]  # batch 1, head 0
    return official_readout(conditional, token_count, num_timesteps, size, path)


def official_readout(conditional: list[torch.Tensor], token_count: int, num_timesteps: int, size: int, path,
                     sigma: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """The official code after the loop: per layer (queries, tokens, steps) -> tokens 1..len-2 and steps
    N//2 -+ N//10 selected, per-map min-max, bilinear to ``size``, mean, Gaussian, min-max, Otsu, NaN padding."""
    t_min, t_max = num_timesteps // 2 - num_timesteps // 10, num_timesteps // 2 + num_timesteps // 10
    per_layer = []
    for layer in conditional:
        side = int(math.sqrt(layer.shape[0]))
        spatial = layer.reshape(side, side, layer.shape[1], layer.shape[2])
        spatial = spatial[..., 1 : token_count - 1, t_min:t_max].mean(-2)
        low = spatial.min(0)[0].min(0)[0]
        high = spatial.max(0)[0].max(0)[0]
        spatial = ((spatial - low) / (high - low)).permute(2, 0, 1)
        per_layer.append(F.interpolate(spatial[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    heatmap = torch.stack(per_layer).mean([0, 1])
    heatmap = torch.tensor(ndimage.gaussian_filter(heatmap.numpy(), sigma=(sigma, sigma), order=0))
    heatmap = (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min())
    threshold = torch.from_numpy(threshold_multiotsu(heatmap.numpy(), classes=2))
    heatmap = heatmap * (heatmap[..., None] > threshold[None, None, :]).any(-1).float()

    width, height = Image.open(path).size
    smallest = min(width, height)
    original = F.interpolate(heatmap[None, None], size=(smallest, smallest), mode="nearest")[0, 0]
    margin_w, margin_h = width - smallest, height - smallest
    pads = (math.floor(margin_w / 2), math.ceil(margin_w / 2), math.floor(margin_h / 2), math.ceil(margin_h / 2))
    original = F.pad(original, pads, value=float("nan"))
    return heatmap.numpy(), original.numpy()
