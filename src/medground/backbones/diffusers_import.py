"""``medground import-diffusers``: a diffusers pipeline (folder or hub id) -> a medground model directory.

Every component is loaded strictly first (the same code loading a model runs), then written in the diffusers layout
beside a ``model.json`` that records the SHA-256 of every source weight file, where it came from, the family's
default layers for this UNet, and the data-use terms the user must honour. ``--unet`` and ``--text-encoder`` swap in
components from elsewhere: Generate-to-Ground's model is SD-1.5's VAE and scheduler + its own UNet + CXR-BERT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medground.backbones.diffusers import (
    PIPELINE_FILE,
    TEXT_CLASSES,
    DiffusersBackbone,
    load_component,
    save_diffusers_model,
    spec_from_pipeline,
)
from medground.backbones.model_dir import (
    MODEL_FILE,
    hub_snapshot,
    load_text_part,
    parse_source,
    read_json_object,
    read_spec,
    sha256_of,
)
from medground.errors import ModelLoadError

MIMIC_TERMS = ("trained on MIMIC-CXR: use is bound by the PhysioNet Credentialed Health Data License 1.5.0 and the "
               "MIMIC-CXR data use agreement (credentialed access, no re-identification, no sharing of the data)")
KNOWN_TERMS = {
    "stanfordaimi/roent-gen-v1-0": f"RoentGen v1 (Chambon et al. 2022), {MIMIC_TERMS}; see its model card",
    "stanfordmimi/roentgen-v2": f"RoentGen-v2 (Stanford AIMI), {MIMIC_TERMS}; see its model card",
    "felixnuetzel/cxr_bert_ldm": f"Generate-to-Ground LDM (Nuetzel et al., MIDL 2025), {MIMIC_TERMS}",
    "microsoft/radedit": f"RadEdit (Perez-Garcia et al. 2024), research use under its Microsoft licence; "
                         f"{MIMIC_TERMS}",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "Stable Diffusion 1.5: CreativeML Open RAIL-M licence",
    "runwayml/stable-diffusion-v1-5": "Stable Diffusion 1.5: CreativeML Open RAIL-M licence",
    "stabilityai/stable-diffusion-2-1-base": "Stable Diffusion 2.1-base: CreativeML Open RAIL++-M licence",
    "stabilityai/stable-diffusion-2-1": "Stable Diffusion 2.1: CreativeML Open RAIL++-M licence",
}
UNKNOWN_TERMS = "not known to medground: check the licence and data-use terms of every source before use"
PIPELINE_PATTERNS = [PIPELINE_FILE, "unet/*", "vae/*", "text_encoder/*", "tokenizer/*", "scheduler/*"]
TEXT_PATTERNS = ["config.json", "*.safetensors", "*.bin", "vocab.txt", "vocab.json", "merges.txt", "tokenizer*",
                 "special_tokens_map.json", "text_encoder/*", "tokenizer/*"]


def _local_or_hub(source: str, patterns: list[str]) -> tuple[Path, dict[str, str]]:
    where = parse_source(source)
    if "path" in where:
        return Path(where["path"]), where
    return hub_snapshot(where["hub_id"], where["revision"], patterns), where


def _weight_hashes(folder: Path) -> list[dict[str, str]]:
    suffixes = (".safetensors", ".bin", ".json", ".txt")
    return [{"file": str(path.relative_to(folder)), "sha256": sha256_of(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.suffix in suffixes]


def import_diffusers(source: str, out: Path, unet: str | None = None, text_encoder: str | None = None,
                     name: str | None = None, data_terms: str | None = None) -> Path:
    """Import ``source`` (pipeline folder or ``hub-id[@revision]``) into the model directory ``out``.

    Args:
        source: a diffusers pipeline folder (with ``model_index.json``) or ``hub-id[@revision]``.
        out: the model directory to write; it must not hold a model yet.
        unet: take the UNet from here instead: a folder or ``hub-id[@revision]``, with ``:subfolder`` when the UNet
            lies in a subfolder of it.
        text_encoder: take the text encoder and tokenizer from here instead (folder or hub id); its width must be
            the UNet's ``cross_attention_dim``.
        name: the model's name; None: the pipeline folder's name.
        data_terms: the licence and data-use terms to record; None: the known terms of the sources
            (``KNOWN_TERMS``), else a note that they are unknown.

    Raises:
        ModelLoadError: ``out`` already holds a model, a component class medground does not support, or parts that
            do not fit together (WeightsNotFoundError: a source is not available).
    """
    out = Path(out)
    if (out / MODEL_FILE).exists():
        raise ModelLoadError(f"{out} already holds a model; choose another --out")
    base, origin = _local_or_hub(source, PIPELINE_PATTERNS)
    spec = spec_from_pipeline(base)
    sources: dict[str, Any] = {"pipeline": origin}
    unet_folder = base / "unet"
    if unet:
        location, _, subfolder = unet.partition(":")
        root, sources["unet"] = _local_or_hub(location, [f"{subfolder}/*" if subfolder else "*"])
        unet_folder = root / subfolder if subfolder else root
        sources["unet"] = {**sources["unet"], "subfolder": subfolder or None}
    text_base = base
    if text_encoder:
        text_base, sources["text_encoder"] = _local_or_hub(text_encoder, TEXT_PATTERNS)
        config = read_json_object(_text_folder(text_base) / "config.json")
        architecture = (config.get("architectures") or [None])[0]
        mapped = TEXT_CLASSES.get(architecture)
        if mapped is None:
            raise ModelLoadError(f"{text_base}: text encoder {architecture!r} is not supported; supported: "
                                 f"{sorted(k for k, v in TEXT_CLASSES.items() if v)}")
        bert = mapped == "transformers.BertModel"
        spec["text_encoder"] = {"class": mapped, "source": {"path": "."}, "attention_mask": bert}
        spec["tokenizer"] = {"class": "transformers.BertTokenizer" if bert else "transformers.CLIPTokenizer",
                             "source": {"path": "."}, **({"max_length": 77} if bert else {})}
    networks = {"unet": load_component(unet_folder, "unet"), "autoencoder": load_component(base / "vae",
                                                                                            "autoencoder")}
    text_parts = {part: load_text_part(text_base, spec, part, None) for part in ("text_encoder", "tokenizer")}
    width = networks["unet"].config.cross_attention_dim
    hidden = text_parts["text_encoder"].config.hidden_size
    if width != hidden:
        raise ModelLoadError(f"the UNet ({unet_folder}) attends to {width}-d text states, but the text encoder "
                             f"({text_base}) gives {hidden}-d ones")
    terms = data_terms or _known_terms(source, unet, text_encoder)
    spec.update({
        "name": name or spec["name"],
        "provenance": {"imported_from": sources, "data_terms": terms,
                       "files": {"pipeline": _weight_hashes(base / "vae") + _weight_hashes(base / "scheduler"),
                                 "unet": _weight_hashes(unet_folder),
                                 "text_encoder": _weight_hashes(_text_folder(text_base))}},
    })
    text_entry, tokenizer_entry = spec.pop("text_encoder"), spec.pop("tokenizer")
    spec["text_encoder"] = {k: v for k, v in text_entry.items() if k not in ("class", "source")}
    spec["tokenizer"] = {k: v for k, v in tokenizer_entry.items() if k not in ("class", "source")}
    save_diffusers_model(out, spec, networks["unet"], networks["autoencoder"], text_parts["text_encoder"],
                         text_parts["tokenizer"])
    (out / "scheduler").mkdir(exist_ok=True)
    shutil.copy(base / "scheduler" / "scheduler_config.json", out / "scheduler" / "scheduler_config.json")
    # the directory must load, and the defaults are those of the loaded UNet
    model = DiffusersBackbone.from_spec(out, read_spec(out), None)
    written = json.loads((out / MODEL_FILE).read_text())
    written["grounding_defaults"] = {"cross_attention_layers": model.layers_at_quarter_resolution()}
    (out / MODEL_FILE).write_text(json.dumps(written, indent=2) + "\n")
    return out


def _text_folder(base: Path) -> Path:
    return base / "text_encoder" if (base / "text_encoder").is_dir() else base


def _known_terms(*sources: str | None) -> str:
    found = []
    for source in sources:
        if source:
            hub_id = source.partition(":")[0].partition("@")[0].lower()
            if hub_id in KNOWN_TERMS:
                found.append(KNOWN_TERMS[hub_id])
    return "; ".join(found) if found else UNKNOWN_TERMS

