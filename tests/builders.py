"""Random-weight models with the real architectures, built locally (no download), for the tests and benchmarks.

MONAI: the paper's layout (AutoencoderKL, DiffusionModelUNet with attention at the two deepest levels, one head per
layer, a CLIP text model and a CLIP BPE tokenizer) with every width divided by ``width_divisor``.
"""

from __future__ import annotations

import json
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


# --- diffusers layouts -------------------------------------------------------------------------------------------
# The real configurations of SD 1.5 (RoentGen v1, G2G's UNet) and SD 2.1-base (RoentGen-v2), every width divided by
# 8 (SD's head counts still divide them), with a 16x16 latent (128-pixel images through the factor-8 VAE).
SD1_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [40, 80, 160, 160], "center_input_sample": False, "cross_attention_dim": 64,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 8, "out_channels": 4, "sample_size": 16,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD2_UNET = {**SD1_UNET, "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True,
            "cross_attention_dim": 48, "upcast_attention": False}
SD_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [16, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 8, "out_channels": 3, "sample_size": 128, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
SD1_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
                 "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}
SD2_SCHEDULER = {**SD1_SCHEDULER, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}
SD1_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
SD2_INDEX = {**SD1_INDEX, "_diffusers_version": "0.10.0.dev0", "scheduler": ["diffusers", "DDIMScheduler"],
             "safety_checker": [None, None], "requires_safety_checker": False}


def _clip_text(out: Path, hidden: int, pad_token: str, act: str, seed: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer(re.findall(r"[a-z]+", REPORT_CORPUS), out / "tokenizer", num_merges=150,
                                     pad_token=pad_token)
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, hidden_act=act,
                            max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    CLIPTextModel(config).eval().save_pretrained(out / "text_encoder")


def _component(folder: Path, cls_name: str, config: dict, seed: int) -> None:
    import diffusers

    torch.manual_seed(seed)
    network = getattr(diffusers, cls_name).from_config({k: v for k, v in config.items() if k != "_class_name"})
    network.save_pretrained(folder)


def random_sd_pipeline(out: Path, version: int = 1, seed: int = 0) -> Path:
    """A diffusers pipeline folder (``model_index.json``, unet/, vae/, text_encoder/, tokenizer/, scheduler/) in the
    layout of SD 1.x (RoentGen v1: epsilon, CLIP ViT-L-style text, end-of-text padding) or SD 2.x (RoentGen-v2:
    v-prediction, linear projections, pad token ``!``), with random weights at 1/8 width."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet, scheduler, index = (SD1_UNET, SD1_SCHEDULER, SD1_INDEX) if version == 1 else \
        (SD2_UNET, SD2_SCHEDULER, SD2_INDEX)
    _component(out / "unet", "UNet2DConditionModel", unet, seed)
    _component(out / "vae", "AutoencoderKL", SD_VAE, seed + 1)
    _clip_text(out, unet["cross_attention_dim"], "<|endoftext|>" if version == 1 else "!",
               "quick_gelu" if version == 1 else "gelu", seed + 2)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


CXR_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz.,-",
                  *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"), "small", "left", "right", "pleural",
                  "effusion", "lung", "opacity", "heart", "the", "patient", "has", "moderate", "cardiomegaly"]


def random_g2g_sources(out: Path, seed: int = 0) -> dict[str, Path]:
    """The three sources of Generate-to-Ground's model, in their real repositories' layouts: an SD-1.5 pipeline
    (VAE, scheduler), the G2G repo with ``unet/`` and ``unet_ema/`` (SD-1.5 UNet attending to 768-d CXR-BERT states,
    here 64-d), and a CXR-BERT-specialized repo (``CXRBertModel`` = BertForMaskedLM + projection, remote code)."""
    from transformers import BertConfig, BertForMaskedLM

    out = Path(out)
    sd15 = random_sd_pipeline(out / "stable-diffusion-v1-5", version=1, seed=seed)
    g2g = out / "cxr_bert_ldm"
    unet = {**SD1_UNET, "cross_attention_dim": 64}
    _component(g2g / "unet", "UNet2DConditionModel", unet, seed + 10)
    _component(g2g / "unet_ema", "UNet2DConditionModel", unet, seed + 11)
    bert = out / "BiomedVLP-CXR-BERT-specialized"
    torch.manual_seed(seed + 12)
    config = BertConfig(vocab_size=len(CXR_BERT_VOCAB), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=512, type_vocab_size=2)
    BertForMaskedLM(config).eval().save_pretrained(bert)
    saved = json.loads((bert / "config.json").read_text())
    saved.update({"architectures": ["CXRBertModel"], "projection_size": 128,
                  "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                               "AutoModel": "modeling_cxrbert.CXRBertModel"}})
    (bert / "config.json").write_text(json.dumps(saved, indent=2))
    (bert / "vocab.txt").write_text("\n".join(CXR_BERT_VOCAB) + "\n")
    (bert / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512,
                                                            "tokenizer_class": "CXRBertTokenizer"}))
    return {"pipeline": sd15, "g2g": g2g, "cxr_bert": bert}


def write_dicom(path: Path, pixels, photometric: str = "MONOCHROME2", bits_stored: int = 12, **tags) -> Path:
    """A minimal uncompressed DICOM (CR image storage) with ``pixels`` (uint16, 2-D or frames) and extra ``tags``."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.Rows, dataset.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.SamplesPerPixel, dataset.BitsAllocated, dataset.BitsStored = 1, 16, bits_stored
    dataset.HighBit, dataset.PixelRepresentation = bits_stored - 1, 0
    dataset.PhotometricInterpretation = photometric
    for key, value in tags.items():
        setattr(dataset, key, value)
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return Path(path)
