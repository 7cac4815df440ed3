"""``medground models`` (what load_model knows), ``convert-monai-ldm`` and ``import-diffusers`` (model folders)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medground.cli.common import Parents, command, quiet_transformers


def add(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """Register ``models``, ``convert-monai-ldm`` and ``import-diffusers`` on ``commands``."""
    command(commands, "models", run_models)

    convert = command(commands, "convert-monai-ldm", run_convert)
    convert.add_argument("--autoencoder", type=Path, required=True, help="path to autoencoder.pth")
    convert.add_argument("--unet", type=Path, required=True, help="path to diffusion_model.pth")
    convert.add_argument("--text-encoder", required=True,
                         help="SD-2.1-base style folder (text_encoder/ + tokenizer/) or hub-id[@revision]")
    convert.add_argument("--out", type=Path, required=True, help="output model directory")

    importer = command(commands, "import-diffusers", run_import_diffusers)
    importer.add_argument("source", help="pipeline folder (model_index.json) or hub-id[@revision]")
    importer.add_argument("--out", type=Path, required=True, help="output model directory")
    importer.add_argument("--unet", default=None, metavar="DIR|HUB-ID[@REV][:SUBFOLDER]",
                          help="take the UNet from here instead (folder with config.json, or hub repo + subfolder)")
    importer.add_argument("--text-encoder", default=None, metavar="DIR|HUB-ID[@REV]",
                          help="take the text encoder and tokenizer from here instead (e.g. CXR-BERT for G2G)")
    importer.add_argument("--name", default=None, help="model name (default: the source's)")
    importer.add_argument("--data-terms", default=None, help="data-use terms to record (default: known terms of "
                          "the source, e.g. MIMIC-CXR credentialing for RoentGen)")


def run_models(_args: argparse.Namespace) -> int:
    """List the model names load_model knows, with their family.

    List the model names load_model resolves without a path (the models shipped in the package), with their
    family, input size and folder.
    """
    from medground.backbones.model_dir import MODEL_FILE, read_spec
    from medground.loading import KNOWN_MODELS

    for name, path in KNOWN_MODELS.items():
        if (path / MODEL_FILE).is_file():
            spec = read_spec(path)
            print(f"{name}\t{spec['family']}\t{spec.get('image_size')} px\t{path}")
        else:
            print(f"{name}\t-\tmissing\t{path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Convert the paper's published MONAI checkpoints into a model directory.

    Load autoencoder.pth and diffusion_model.pth (old 'generative' package format, from the MONAI bundle
    cxr_image_synthesis_latent_diffusion_model) through MONAI's load_old_state_dict with strict checks, record
    their SHA-256, and write a medground model directory.
    """
    from medground.backbones.monai_convert import convert_monai_ldm

    quiet_transformers()
    out = convert_monai_ldm(args.autoencoder, args.unet, args.text_encoder, args.out)
    print(f"wrote {out} (load it with medground.load_model({str(out)!r}) or --model {out})")
    return 0


def run_import_diffusers(args: argparse.Namespace) -> int:
    """Import a diffusers pipeline (RoentGen, RoentGen-v2, G2G, SD) as a model directory.

    Load a diffusers pipeline folder or hub-id[@revision] strictly, record SHA-256 of every weight file and the
    data-use terms, and write a medground model directory. --unet and --text-encoder swap in components from
    elsewhere (Generate-to-Ground: SD-1.5 pipeline + its UNet + CXR-BERT).
    """
    from medground.backbones.diffusers_import import import_diffusers

    quiet_transformers()
    out = import_diffusers(args.source, args.out, unet=args.unet, text_encoder=args.text_encoder,
                           name=args.name, data_terms=args.data_terms)
    spec = json.loads((out / "model.json").read_text())
    print(f"wrote {out}: family diffusers, {spec['image_size']} px, {spec['noise_schedule']['prediction_type']}, "
          f"layers {spec['grounding_defaults']['cross_attention_layers']}")
    print(f"data terms: {spec['provenance']['data_terms']}")
    return 0
