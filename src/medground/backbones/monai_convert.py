"""The paper's MONAI model (Pinaya et al., ``cxr_image_synthesis_latent_diffusion_model``) and the
conversion of its published old-format checkpoints into a medground model directory.

The checkpoints are state dicts of the old ``generative`` package; they load into MONAI core classes only
through ``load_old_state_dict``, which we wrap with strict checks (every file key consumed, every
parameter filled), since that method alone silently keeps random values for keys it cannot map.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medground.backbones.base import NoiseSchedule
from medground.backbones.model_dir import parse_source, save_model_dir, text_part_folder
from medground.backbones.monai import network_class
from medground.backbones.weights import read_torch_state, sha256_of
from medground.errors import ModelLoadError, WeightsNotFoundError
from medground.outputs import check_new_folder, staged_folder

PAPER_AUTOENCODER_ARGS: dict[str, Any] = {
    "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [64, 128, 128, 128],
    "latent_channels": 3, "num_res_blocks": 2, "attention_levels": [False, False, False, False],
    "with_encoder_nonlocal_attn": False, "with_decoder_nonlocal_attn": False,
    "norm_num_groups": 32, "norm_eps": 1e-6,
}
PAPER_UNET_ARGS: dict[str, Any] = {
    "spatial_dims": 2, "in_channels": 3, "out_channels": 3, "channels": [256, 512, 768],
    "attention_levels": [False, True, True], "num_res_blocks": 2, "num_head_channels": [0, 512, 768],
    "with_conditioning": True, "cross_attention_dim": 1024, "transformer_num_layers": 1,
    "norm_num_groups": 32, "norm_eps": 1e-6,
}
PAPER_NOISE_SCHEDULE = NoiseSchedule(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015,
                                     beta_end=0.0205, prediction_type="v_prediction")
PAPER_LATENT_SCALE = 0.3
PAPER_IMAGE_SIZE = 512
PAPER_DATA_TERMS = ("Weights trained on MIMIC-CXR: use is bound by the PhysioNet Credentialed Health Data "
                    "License 1.5.0 and the MIMIC-CXR data use agreement.")


def load_old_checkpoint(network: nn.Module, path: Path) -> None:
    """Load an old ``generative``-package state dict through MONAI's ``load_old_state_dict``, strictly."""
    state = read_torch_state(path)
    with torch.no_grad():
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    remaining = dict(state)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            network.load_old_state_dict(remaining)
    except (KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{path} does not fit {type(network).__name__}: {exc}") from exc
    all_matched = all(key in network.state_dict() for key in state)
    if remaining and not all_matched:
        raise ModelLoadError(f"{path}: {len(remaining)} keys were not used, e.g. {sorted(remaining)[:3]}")
    unfilled = [k for k, v in network.state_dict().items() if v.is_floating_point() and torch.isnan(v).any()]
    if unfilled:
        raise ModelLoadError(f"{path}: {len(unfilled)} parameters got no value from the file, e.g. {unfilled[:3]}")


def convert_monai_ldm(autoencoder_path: Path, unet_path: Path, text_encoder: str, out_dir: Path,
                      autoencoder_args: dict[str, Any] | None = None, unet_args: dict[str, Any] | None = None,
                      image_size: int = PAPER_IMAGE_SIZE, name: str = "monai-cxr-ldm") -> Path:
    """Published ``autoencoder.pth`` + ``diffusion_model.pth`` + a text encoder source -> model directory.

    Args:
        autoencoder_path: the old-format autoencoder checkpoint.
        unet_path: the old-format diffusion UNet checkpoint.
        text_encoder: a local folder (SD-2.1-base layout with ``text_encoder/`` and ``tokenizer/``, or the
            transformers files directly) that is copied in, or ``hub-id[@revision]`` that is recorded, not fetched.
        out_dir: the model directory to write.
        autoencoder_args: MONAI ``AutoencoderKL`` arguments; None: the paper's.
        unet_args: MONAI ``DiffusionModelUNet`` arguments; None: the paper's.
        image_size: the model's input side.
        name: the model's name.

    Raises:
        ModelLoadError: a checkpoint that does not fill its network exactly, or a text encoder whose width is not
            the UNet's ``cross_attention_dim`` (WeightsNotFoundError: a text folder that does not load).
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    check_new_folder(Path(out_dir), ModelLoadError)
    autoencoder_args = autoencoder_args or PAPER_AUTOENCODER_ARGS
    unet_args = unet_args or PAPER_UNET_ARGS
    autoencoder = network_class("monai.AutoencoderKL")(**autoencoder_args)
    unet = network_class("monai.DiffusionModelUNet")(**unet_args)
    load_old_checkpoint(autoencoder, Path(autoencoder_path))
    load_old_checkpoint(unet, Path(unet_path))
    source = parse_source(text_encoder)
    text_model = tokenizer = None
    text_entries: dict[str, Any] = {}
    if "path" in source:
        base = Path(source["path"])
        text_dir, tokenizer_dir = text_part_folder(base, "text_encoder"), text_part_folder(base, "tokenizer")
        try:
            text_model = CLIPTextModel.from_pretrained(str(text_dir), local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"cannot load a CLIP text encoder and tokenizer from {base}: {exc}") from exc
        if text_model.config.hidden_size != unet_args["cross_attention_dim"]:
            raise ModelLoadError(f"text encoder at {text_dir} is {text_model.config.hidden_size}-d; the UNet "
                                 f"expects {unet_args['cross_attention_dim']}-d context")
    else:
        for part in ("text_encoder", "tokenizer"):
            cls = "transformers.CLIPTextModel" if part == "text_encoder" else "transformers.CLIPTokenizer"
            text_entries[part] = {"class": cls, "source": {**source, "subfolder": part}}
    spec = {
        "name": name,
        "family": "monai-ldm",
        "autoencoder": {"class": "monai.AutoencoderKL", "args": autoencoder_args},
        "unet": {"class": "monai.DiffusionModelUNet", "args": unet_args},
        **text_entries,
        "noise_schedule": PAPER_NOISE_SCHEDULE.to_dict(),
        "latent_scale": PAPER_LATENT_SCALE,
        "image_size": image_size,
        "grounding_defaults": {},
        "provenance": {
            "converted_from": {
                "autoencoder": {"file": Path(autoencoder_path).name, "sha256": sha256_of(Path(autoencoder_path))},
                "unet": {"file": Path(unet_path).name, "sha256": sha256_of(Path(unet_path))},
                "text_encoder": source,
            },
            "data_terms": PAPER_DATA_TERMS,
        },
    }
    with staged_folder(Path(out_dir), ModelLoadError) as staging:  # a failure leaves no partial folder
        save_model_dir(staging, spec, {"autoencoder": autoencoder, "unet": unet}, text_model, tokenizer)
    return Path(out_dir)
