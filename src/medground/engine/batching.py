"""How many images an inversion batch holds when the caller does not say: as many as free GPU memory allows.

The UNet's activation memory grows linearly with the batch; one probe pass at batch 1 and one at batch 2 measure the
growth per image (in fp32, an upper bound for the other precisions), and the batch fills ``MEMORY_FRACTION`` of the
free memory. On the CPU the Grounder's default (``DEFAULT_BATCH_SIZE``) stands (benchmarks/throughput.py measures what
batching gives).
"""

from __future__ import annotations

import torch

from medground.backbones.base import Backbone

MEMORY_FRACTION = 0.7
MAX_BATCH = 64
"""A larger batch no longer raises throughput on one GPU, and makes a work unit (and what a kill loses) longer."""
DEFAULT_BATCH_SIZE = 8
"""Images per inversion batch when nothing says otherwise (the Grounder's default, and the CPU's)."""


@torch.no_grad()
def auto_batch_size(model: Backbone, unconditional_prompt: str = "") -> int:
    """Images per inversion batch for ``model``: from free GPU memory on CUDA, ``DEFAULT_BATCH_SIZE`` elsewhere."""
    if model.device.type != "cuda":
        return DEFAULT_BATCH_SIZE
    context = model.embed_text([unconditional_prompt])
    side = model.latent_side
    channels = model.encode_images(torch.zeros(1, 1, model.image_size, model.image_size, device=model.device)).shape[1]
    peaks = []
    for batch in (1, 2):
        latents = torch.zeros(batch, channels, side, side, device=model.device)
        torch.cuda.synchronize(model.device)
        torch.cuda.reset_peak_memory_stats(model.device)
        before = torch.cuda.memory_allocated(model.device)
        model.predict(latents, 0, context.expand(batch, *context.shape[1:]))
        torch.cuda.synchronize(model.device)
        peaks.append(torch.cuda.max_memory_allocated(model.device) - before)
    per_image = max(peaks[1] - peaks[0], 1)
    free, _ = torch.cuda.mem_get_info(model.device)
    return int(min(MAX_BATCH, max(1, MEMORY_FRACTION * free // per_image)))
