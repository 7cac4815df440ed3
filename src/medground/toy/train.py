"""Train a toy LDM on phantoms: ``python -m medground.toy.train --family monai-ldm|diffusers --out DIR``.

Both toys are built from the same component kinds as the real models of their family and trained through the same
backbone seam the engine uses (``encode_images``, ``embed_text``, ``predict``); checkpoints are complete model
directories that the common loader reads. Captions are dropped to the empty string with probability
``caption_dropout`` so the unconditional branch is learnt. Pick a checkpoint by a grounding metric, not the loss.

- ``monai-ldm`` (``toy``): MONAI ``DiffusionModelUNet`` with cross-attention at 16x16 and 8x8, v-prediction on the
  paper's schedule, and a fixed lossless pixel-unshuffle autoencoder (1x64x64 <-> 4x32x32).
- ``diffusers`` (``toy-sd``): a diffusers ``UNet2DConditionModel`` of the SD block layout (cross-attention at 16x16 and
  8x8) on SD 1.x's schedule (epsilon-prediction unless ``--prediction-type v_prediction``, SD 2.x's target, which the
  shipped toy-sd uses), and a small ``AutoencoderKL`` (3 channels in, 4 latent channels, factor 2) trained first on
  the phantoms (``--autoencoder-steps``) with its latent scale set as SD's was (1 / std).

Both use a CLIP text model without transformer layers (token + position embeddings and the final LayerNorm) over a
CLIP BPE tokenizer built from the phantom vocabulary, trained jointly with the UNet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medground.backbones.base import Backbone, NoiseSchedule
from medground.datasets.phantoms import SIZE, generate_phantom, phantom_vocabulary
from medground.errors import ConfigError
from medground.toy.tokenizer import build_clip_tokenizer

TRAIN_SEED_OFFSET = 0
"""Training phantoms use seeds [0, steps * batch); validation and evaluation seeds lie far above."""
TEXT_LENGTH = 24
TEXT_LAYERS = 0
"""No transformer layers: token + position embeddings and the final LayerNorm. Each token then carries only
its own word and the end/padding tokens carry nothing, so the UNet must read the words themselves; with
causal layers it learnt to read the whole caption from the padding tokens, and word-level attention maps
came out anti-correlated with the findings (measured: AUROC 0.31 at step 1200 of a 2-layer run)."""
MONAI_UNET_ARGS = {
    "spatial_dims": 2, "in_channels": 4, "out_channels": 4, "channels": [32, 64, 96],
    "attention_levels": [False, True, True], "num_res_blocks": 1, "num_head_channels": [0, 64, 96],
    "with_conditioning": True, "cross_attention_dim": 64, "transformer_num_layers": 1,
    "norm_num_groups": 16, "norm_eps": 1e-6,
}
PIXEL_AUTOENCODER_ARGS = {"in_channels": 1, "factor": 2}
SD_UNET_CONFIG = {
    "sample_size": SIZE // 2, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 64, 96],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
    "cross_attention_dim": 64, "attention_head_dim": 1, "norm_num_groups": 16,
}
SD_AUTOENCODER_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 1, "norm_num_groups": 16,
    "sample_size": SIZE, "mid_block_add_attention": False,
}
SCHEDULES = {
    "monai-ldm": NoiseSchedule(),  # the paper's: scaled linear 0.0015 -> 0.0205, v-prediction
    "diffusers": NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                               prediction_type="epsilon"),  # SD 1.x
}
NAMES = {"monai-ldm": "toy", "diffusers": "toy-sd"}


def phantom_batch(first_seed: int, count: int) -> tuple[torch.Tensor, list[Any]]:
    """Phantoms ``first_seed .. first_seed + count - 1`` as a (count, 1, 64, 64) tensor, and the phantoms."""
    phantoms = [generate_phantom(s) for s in range(first_seed, first_seed + count)]
    return torch.from_numpy(np.stack([p.image for p in phantoms]))[:, None], phantoms


def text_parts(tokenizer_dir: Path, seed: int) -> tuple[Any, torch.nn.Module]:
    """The toys' tokenizer (BPE over the phantom vocabulary, saved in ``tokenizer_dir``) and a fresh CLIP text model
    without transformer layers (``TEXT_LAYERS``); ``seed`` seeds torch first."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(phantom_vocabulary() + ["."], tokenizer_dir, num_merges=400,
                                     max_length=TEXT_LENGTH)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=2, max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer, CLIPTextModel(text_config)


def build_toy(family: str, tokenizer_dir: Path, seed: int, autoencoder: torch.nn.Module | None = None,
              latent_scale: float = 1.0) -> Backbone:
    """A fresh (untrained) toy of ``family`` behind the seam; also the ``untrained`` baseline's architecture.

    Args:
        family: ``monai-ldm`` (``toy``) or ``diffusers`` (``toy-sd``); another is a ConfigError.
        tokenizer_dir: where the tokenizer is written.
        seed: seeds the initial weights (text encoder, then UNet).
        autoencoder: ``diffusers`` only: a trained ``AutoencoderKL`` (``train_autoencoder``); None: a fresh one.
        latent_scale: ``diffusers`` only: that autoencoder's latent scale.
    """
    tokenizer, text_encoder = text_parts(tokenizer_dir, seed)
    if family == "monai-ldm":
        from medground.backbones.components import PixelUnshuffleAutoencoder
        from medground.backbones.monai import MonaiBackbone, network_class

        unet = network_class("monai.DiffusionModelUNet")(**MONAI_UNET_ARGS)
        return MonaiBackbone(PixelUnshuffleAutoencoder(**PIXEL_AUTOENCODER_ARGS), unet, text_encoder, tokenizer,
                             SCHEDULES[family], 1.0, SIZE, NAMES[family], unet_args=MONAI_UNET_ARGS)
    if family == "diffusers":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from medground.backbones.diffusers import DiffusersBackbone

        unet = UNet2DConditionModel(**SD_UNET_CONFIG)
        autoencoder = autoencoder if autoencoder is not None else AutoencoderKL(**SD_AUTOENCODER_CONFIG)
        return DiffusersBackbone(autoencoder, unet, text_encoder, tokenizer, SCHEDULES[family], latent_scale, SIZE,
                                 NAMES[family])
    raise ConfigError(f"unknown toy family {family!r}; known: {sorted(NAMES)}")


def save_toy(backbone: Backbone, out_dir: Path, extra: dict[str, Any]) -> Path:
    """A complete model directory of the toy (the format ``load_model`` reads).

    Args:
        backbone: the toy (``build_toy``, or a checkpoint being trained further).
        out_dir: the checkpoint folder.
        extra: more description entries, e.g. ``training``: how it was trained.
    """
    spec = {"name": backbone.name, "noise_schedule": backbone.noise_schedule.to_dict(),
            "latent_scale": backbone.latent_scale, "image_size": SIZE, **extra}
    networks = backbone.networks()
    if backbone.family == "monai-ldm":
        from medground.backbones.model_dir import save_model_dir

        spec.update({"family": "monai-ldm",
                     "autoencoder": {"class": "medground.PixelUnshuffleAutoencoder", "args": PIXEL_AUTOENCODER_ARGS,
                                     "note": "fixed lossless pixel-unshuffle, no weights"},
                     "unet": {"class": "monai.DiffusionModelUNet", "args": MONAI_UNET_ARGS}})
        return save_model_dir(out_dir, spec, {"unet": networks["unet"]}, networks["text_encoder"],
                              backbone.tokenizer)
    from medground.backbones.diffusers import save_diffusers_model

    return save_diffusers_model(out_dir, spec, networks["unet"], networks["autoencoder"], networks["text_encoder"],
                                backbone.tokenizer)


def train_autoencoder(out_dir: Path, steps: int, batch_size: int, seed: int, lr: float = 1e-3,
                      kl_weight: float = 1e-6) -> tuple[torch.nn.Module, float]:
    """The toy-sd autoencoder: reconstruction (L1 + MSE) with a small KL term, as SD's VAE objective without its
    perceptual and adversarial parts; returns it and its latent scale (1 / std of the posterior means).

    Args:
        out_dir: where ``autoencoder_log.jsonl`` is appended.
        steps: optimiser steps.
        batch_size: phantoms per step, from seed 10,000,000 up (never the UNet's seeds).
        seed: seeds the initial weights and the posterior samples.
        lr: AdamW learning rate.
        kl_weight: weight of the KL term.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    autoencoder = AutoencoderKL(**SD_AUTOENCODER_CONFIG)
    optimiser = torch.optim.AdamW(autoencoder.parameters(), lr=lr, weight_decay=0.0)
    log = (out_dir / "autoencoder_log.jsonl").open("a")
    started = time.time()
    autoencoder.train()
    for step in range(1, steps + 1):
        images, _ = phantom_batch(10_000_000 + (step - 1) * batch_size, batch_size)  # not the UNet's seeds
        pixels = images.expand(-1, 3, -1, -1) * 2 - 1
        posterior = autoencoder.encode(pixels).latent_dist
        reconstruction = autoencoder.decode(posterior.sample()).sample
        loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels) + \
            kl_weight * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        _log_step(log, step, loss, started, "autoencoder")
    autoencoder.eval().requires_grad_(False)
    with torch.no_grad():
        images, _ = phantom_batch(11_000_000, 256)
        means = autoencoder.encode(images.expand(-1, 3, -1, -1) * 2 - 1).latent_dist.mean
    return autoencoder, float(1.0 / means.std())


def _log_step(log: Any, step: int, loss: torch.Tensor, started: float, part: str | None = None) -> dict[str, Any]:
    """One line of the training log per step; every 50th also on stdout (tagged with ``part`` when given)."""
    record = {"step": step, "loss": round(loss.item(), 5), "seconds": round(time.time() - started, 1)}
    log.write(json.dumps(record) + "\n")
    log.flush()
    if step % 50 == 0:
        print(json.dumps({part: record} if part else record), flush=True)
    return record


def train(out_dir: Path, family: str, steps: int, batch_size: int, seed: int, lr: float, caption_dropout: float,
          checkpoint_every: int, autoencoder_steps: int = 1500, init_from: Path | None = None,
          prediction_type: str | None = None) -> None:
    """Train a toy on phantoms: a log line per step, a complete model directory every ``checkpoint_every`` steps.

    Args:
        out_dir: the run folder (``train_log.jsonl``, ``checkpoints/step_NNNNN``), created if needed.
        family: ``monai-ldm`` or ``diffusers``; with ``init_from`` the checkpoint's family is trained.
        steps: optimiser steps (learning rate: 100 warm-up steps, then a cosine down to a tenth).
        batch_size: phantoms per step, each step the next training seeds.
        seed: seeds the initial weights, the timesteps and noise, and the caption dropout.
        lr: the peak AdamW learning rate.
        caption_dropout: probability that a caption is replaced by the empty prompt, so the unconditional branch is
            learnt.
        checkpoint_every: steps between checkpoints; the last step is always saved.
        autoencoder_steps: ``diffusers``: steps of the autoencoder's training, which runs first.
        init_from: continue from a checkpoint's weights (a fresh optimiser and learning-rate schedule, training
            phantoms after the checkpoint's), e.g. after an interrupted run; its autoencoder is kept as it is.
        prediction_type: train the UNet to predict ``epsilon`` or ``v_prediction`` instead of the family's default
            (or the checkpoint's); a continued run may switch, as SD 2's v-models were fine-tuned from epsilon ones.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    first_seed = TRAIN_SEED_OFFSET
    if init_from is not None:
        from medground.loading import load_model

        backbone = load_model(init_from)
        for network in (backbone.unet, backbone.text_encoder):
            network.requires_grad_(True)
        first_seed = backbone.description.get("training", {}).get("train_phantom_seeds", [0, 0])[1]
    else:
        autoencoder, latent_scale = None, 1.0
        if family == "diffusers":
            autoencoder, latent_scale = train_autoencoder(out_dir, autoencoder_steps, min(batch_size, 16), seed)
        backbone = build_toy(family, out_dir / "tokenizer", seed, autoencoder, latent_scale)
    if prediction_type is not None:
        backbone.noise_schedule = dataclasses.replace(backbone.noise_schedule, prediction_type=prediction_type)
    unet, text_encoder = backbone.networks()["unet"], backbone.networks()["text_encoder"]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = 100
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * (0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0))) * 0.9 + 0.1)
    )
    noise_schedule = backbone.noise_schedule
    alphas = noise_schedule.alphas_cumprod()
    generator = torch.Generator().manual_seed(seed)
    drop_rng = np.random.default_rng(seed)
    log = (out_dir / "train_log.jsonl").open("a")
    started = time.time()
    unet.train()
    text_encoder.train()
    for step in range(1, steps + 1):
        images, phantoms = phantom_batch(first_seed + (step - 1) * batch_size, batch_size)
        captions = ["" if drop_rng.random() < caption_dropout else p.caption for p in phantoms]
        with torch.no_grad():
            latents = backbone.encode_images(images)
        context = backbone.embed_text(captions)
        t = torch.randint(0, noise_schedule.num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = noise if noise_schedule.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
        loss = F.mse_loss(backbone.predict(noisy, t, context), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        record = _log_step(log, step, loss, started)
        if step % checkpoint_every == 0 or step == steps:
            command = "python -m medground.toy.train " + " ".join(sys.argv[1:])
            training = {"command": command, "family": family, "seed": seed, "steps": step, "batch_size": batch_size,
                        "lr": lr, "caption_dropout": caption_dropout,
                        "prediction_type": noise_schedule.prediction_type,
                        "train_phantom_seeds": [0, first_seed + step * batch_size],
                        "final_loss": record["loss"], "seconds": record["seconds"]}
            if init_from is not None:
                training["continued_from"] = {"checkpoint": str(init_from),
                                              "training": backbone.description.get("training")}
            if family == "diffusers" and init_from is None:  # a continued run keeps its checkpoint's autoencoder
                training["autoencoder_steps"] = autoencoder_steps
            unet.eval()
            text_encoder.eval()
            save_toy(backbone, out_dir / "checkpoints" / f"step_{step:05d}", {"training": training})
            unet.train()
            text_encoder.train()


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python -m medground.toy.train`` (``--help`` lists the flags)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the logs and checkpoints")
    parser.add_argument("--family", choices=sorted(NAMES), default="monai-ldm")
    parser.add_argument("--steps", type=int, default=3200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--caption-dropout", type=float, default=0.15)
    parser.add_argument("--checkpoint-every", type=int, default=400)
    parser.add_argument("--autoencoder-steps", type=int, default=1500, help="diffusers: autoencoder training steps")
    parser.add_argument("--init-from", type=Path, default=None, help="continue from this checkpoint's weights")
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None,
                        help="what the UNet predicts (default: the family's, or the checkpoint's when continuing)")
    args = parser.parse_args(argv)
    train(args.out, args.family, args.steps, args.batch_size, args.seed, args.lr, args.caption_dropout,
          args.checkpoint_every, args.autoencoder_steps, args.init_from, args.prediction_type)


if __name__ == "__main__":
    main()
