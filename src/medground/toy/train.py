"""Train the toy LDM on phantoms: ``python -m medground.toy.train --out DIR``.

Components are the kinds the paper's model uses and the same loader reads: a MONAI DiffusionModelUNet
with cross-attention (v-prediction, the paper's noise schedule), a transformers CLIP text model with a
CLIP BPE tokenizer built over the phantom vocabulary (trained jointly), and a fixed lossless
pixel-unshuffle autoencoder (1x64x64 <-> 4x32x32, declared as such in model.json). Captions are dropped
to the empty string with probability ``caption_dropout`` so the unconditional branch is learnt.
Checkpoints are written as complete model directories; pick one by a grounding metric, not the loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medground.engine.schedule import NoiseSchedule
from medground.models.components import PixelUnshuffleAutoencoder, network_class
from medground.models.ldm import save_model_dir
from medground.text import build_clip_tokenizer
from medground.toy.phantoms import generate_phantom, phantom_vocabulary

TRAIN_SEED_OFFSET = 0
"""Training phantoms use seeds [0, steps * batch); validation and evaluation seeds lie far above."""
TEXT_LENGTH = 24
TEXT_LAYERS = 0
"""No transformer layers: token + position embeddings and the final LayerNorm. Each token then carries only
its own word and the end/padding tokens carry nothing, so the UNet must read the words themselves; with
causal layers it learnt to read the whole caption from the padding tokens, and word-level attention maps
came out anti-correlated with the findings (measured: AUROC 0.31 at step 1200 of a 2-layer run)."""
UNET_ARGS = {
    "spatial_dims": 2, "in_channels": 4, "out_channels": 4, "channels": [32, 64, 96],
    "attention_levels": [False, True, True], "num_res_blocks": 1, "num_head_channels": [0, 64, 96],
    "with_conditioning": True, "cross_attention_dim": 64, "transformer_num_layers": 1,
    "norm_num_groups": 16, "norm_eps": 1e-6,
}
AUTOENCODER_ARGS = {"in_channels": 1, "factor": 2}
NOISE_SCHEDULE = NoiseSchedule()  # the paper's: scaled linear 0.0015 -> 0.0205, v-prediction


def build_networks(tokenizer_dir: Path, seed: int):
    """Fresh (untrained) toy networks; also the ``untrained`` baseline of the toy evaluation."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(phantom_vocabulary() + ["."], tokenizer_dir, num_merges=400,
                                     max_length=TEXT_LENGTH)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=2, max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    unet = network_class("monai.DiffusionModelUNet")(**UNET_ARGS)
    return tokenizer, text_encoder, unet


def model_spec(extra: dict) -> dict:
    return {
        "name": "toy",
        "family": "monai-ldm",
        "autoencoder": {"class": "medground.PixelUnshuffleAutoencoder", "args": AUTOENCODER_ARGS,
                        "note": "fixed lossless pixel-unshuffle, no weights"},
        "unet": {"class": "monai.DiffusionModelUNet", "args": UNET_ARGS},
        "noise_schedule": NOISE_SCHEDULE.to_dict(),
        "latent_scale": 1.0,
        "image_size": 64,
        **extra,
    }


def train(out_dir: Path, steps: int, batch_size: int, seed: int, lr: float, caption_dropout: float,
          checkpoint_every: int) -> None:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, text_encoder, unet = build_networks(out_dir / "tokenizer", seed)
    autoencoder = PixelUnshuffleAutoencoder(**AUTOENCODER_ARGS)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * (0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0))) * 0.9 + 0.1)
    )
    alphas = NOISE_SCHEDULE.alphas_cumprod()
    generator = torch.Generator().manual_seed(seed)
    drop_rng = np.random.default_rng(seed)
    log = (out_dir / "train_log.jsonl").open("a")
    started = time.time()
    unet.train()
    text_encoder.train()
    for step in range(1, steps + 1):
        first = TRAIN_SEED_OFFSET + (step - 1) * batch_size
        phantoms = [generate_phantom(s) for s in range(first, first + batch_size)]
        images = torch.from_numpy(np.stack([p.image for p in phantoms]))[:, None]
        captions = ["" if drop_rng.random() < caption_dropout else p.caption for p in phantoms]
        with torch.no_grad():
            latents = autoencoder.encode(images)[0]
        ids = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        context = text_encoder(ids)[0]
        t = torch.randint(0, NOISE_SCHEDULE.num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * latents
        loss = F.mse_loss(unet(noisy, timesteps=t, context=context), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        record = {"step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - started, 1)}
        log.write(json.dumps(record) + "\n")
        log.flush()
        if step % 50 == 0:
            print(json.dumps(record), flush=True)
        if step % checkpoint_every == 0 or step == steps:
            command = "python -m medground.toy.train " + " ".join(sys.argv[1:])
            training = {"command": command, "seed": seed, "steps": step, "batch_size": batch_size, "lr": lr,
                        "caption_dropout": caption_dropout, "train_phantom_seeds": [0, step * batch_size],
                        "final_loss": record["loss"], "seconds": record["seconds"]}
            save_model_dir(out_dir / "checkpoints" / f"step_{step:05d}", model_spec({"training": training}),
                           {"unet": unet}, text_encoder.eval(), tokenizer)
            text_encoder.train()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the log and checkpoints")
    parser.add_argument("--steps", type=int, default=3200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--caption-dropout", type=float, default=0.15)
    parser.add_argument("--checkpoint-every", type=int, default=400)
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.batch_size, args.seed, args.lr, args.caption_dropout, args.checkpoint_every)


if __name__ == "__main__":
    main()
