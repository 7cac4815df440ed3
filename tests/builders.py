"""Random-weight models with the real architectures, built locally (no download), for the tests and benchmarks.

MONAI: the paper's layout (AutoencoderKL, DiffusionModelUNet with attention at the two deepest levels, one head per
layer, a CLIP text model and a CLIP BPE tokenizer) with every width divided by ``width_divisor``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from medground.backbones.model_dir import save_model_dir
from medground.backbones.monai import network_class
from medground.backbones.monai_convert import (
    PAPER_AUTOENCODER_ARGS,
    PAPER_IMAGE_SIZE,
    PAPER_LATENT_SCALE,
    PAPER_NOISE_SCHEDULE,
    PAPER_UNET_ARGS,
)
from medground.toy.tokenizer import build_clip_tokenizer

REPORT_CORPUS = (
    "small left pleural effusion. large right pleural effusion with adjacent atelectasis. "
    "right lower lobe consolidation concerning for pneumonia. moderate cardiomegaly. mild pulmonary edema. "
    "left apical pneumothorax. patchy opacity in the left lung base. bibasilar atelectasis. "
    "the patient has lung opacity. no focal consolidation. stable cardiomediastinal silhouette."
)


def random_paper_layout(out_dir: Path, width_divisor: int = 8, image_size: int = 128, text_dim: int = 64,
                        seed: int = 0) -> Path:
    """Write a random-weight model directory of the paper's layout; ``width_divisor=1`` is full size."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    groups = max(32 // width_divisor, 1)
    autoencoder_args = {**PAPER_AUTOENCODER_ARGS, "norm_num_groups": groups,
                        "channels": [c // width_divisor for c in PAPER_AUTOENCODER_ARGS["channels"]]}
    unet_channels = [c // width_divisor for c in PAPER_UNET_ARGS["channels"]]
    unet_args = {**PAPER_UNET_ARGS, "norm_num_groups": groups, "channels": unet_channels,
                 "num_head_channels": [0, *unet_channels[1:]], "cross_attention_dim": text_dim}
    autoencoder = network_class("monai.AutoencoderKL")(**autoencoder_args)
    unet = network_class("monai.DiffusionModelUNet")(**unet_args)
    out_dir = Path(out_dir)
    tokenizer = build_clip_tokenizer(re.findall(r"[a-z]+", REPORT_CORPUS), out_dir / "tokenizer", num_merges=150)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config).eval()
    spec = {
        "name": f"random-paper-layout-w{width_divisor}",
        "family": "monai-ldm",
        "autoencoder": {"class": "monai.AutoencoderKL", "args": autoencoder_args},
        "unet": {"class": "monai.DiffusionModelUNet", "args": unet_args},
        "noise_schedule": PAPER_NOISE_SCHEDULE.to_dict(),
        "latent_scale": PAPER_LATENT_SCALE,
        "image_size": image_size if width_divisor > 1 else PAPER_IMAGE_SIZE,
        "grounding_defaults": {},
        "provenance": {"random_init": {"seed": seed, "width_divisor": width_divisor},
                       "note": "random weights: grounding maps from this model carry no meaning"},
    }
    return save_model_dir(out_dir, spec, {"autoencoder": autoencoder, "unet": unet}, text_encoder, tokenizer)
