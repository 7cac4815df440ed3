"""``medground import-diffusers``: a diffusers pipeline (folder or hub id) -> a medground model directory.

Every component is loaded strictly (the same code ``load_model`` runs), then written in the diffusers layout beside a
``model.json`` that records the SHA-256 of every source weight file, where it came from, the family's default layers
for this UNet, and the data-use terms the user must honour. ``--unet`` and ``--text-encoder`` swap in components from
elsewhere: Generate-to-Ground's model is SD-1.5's VAE and scheduler + its own UNet + CXR-BERT.

Memory: one component is in memory at a time. Weight files are streamed into the new directory (hashed as they are
copied) and that copy is what is loaded and checked, then freed before the next component; only a legacy ``.bin`` or
a text encoder that is not stored as its own class is re-serialised (as safetensors). The default layers come from
one pass of the UNet and autoencoder built on the meta device (shapes only, no weights). Everything is written into a
hidden sibling folder that becomes ``--out`` only once complete, and is removed on any failure.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medground.backbones.diffusers import (
    PIPELINE_FILE,
    TEXT_CLASSES,
    WEIGHT_FILES,
    load_component,
    model_description,
    quarter_resolution_layers,
    spec_from_pipeline,
)
from medground.backbones.model_dir import (
    MODEL_FILE,
    hub_snapshot,
    load_text_part,
    parse_source,
    read_spec,
    spec_image_size,
    spec_latent_scale,
    text_part_folder,
)
from medground.backbones.weights import read_json_object, sha256_of, shard_names
from medground.errors import MedgroundError, ModelLoadError
from medground.outputs import check_apart, check_new_folder, copy_hashed, json_bytes, staged_folder, write_atomic

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
TEXT_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
"""Text-encoder weights that are copied as they are (a ``.bin`` is re-serialised as safetensors)."""
CHUNK = 1 << 20
PROMPT_LENGTH = 77
"""Tokens of the blank prompt of the layer-finding pass (the grid sides do not depend on it)."""


def _local_or_hub(source: str, patterns: list[str]) -> tuple[Path, dict[str, str]]:
    where = parse_source(source)
    if "path" in where:
        return Path(where["path"]), where
    return hub_snapshot(where["hub_id"], where["revision"], patterns), where


def _weight_hashes(folder: Path, known: dict[Path, str]) -> list[dict[str, str]]:
    """SHA-256 of every weight, config and vocabulary file under ``folder``; files already hashed while they were
    copied are not read again."""
    suffixes = (".safetensors", ".bin", ".json", ".txt")
    return [{"file": str(path.relative_to(folder)), "sha256": known.get(path.resolve()) or sha256_of(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.suffix in suffixes]


def import_diffusers(source: str, out: Path, unet: str | None = None, text_encoder: str | None = None,
                     name: str | None = None, data_terms: str | None = None) -> Path:
    """Import ``source`` (pipeline folder or ``hub-id[@revision]``) into the model directory ``out``.

    Args:
        source: a diffusers pipeline folder (with ``model_index.json``) or ``hub-id[@revision]``.
        out: the model directory to write: a new or empty folder. Nothing is written until every source is found;
            everything goes to a hidden sibling folder that becomes ``out`` when complete, and on failure nothing is
            left.
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
    named = {"pipeline": source, "--unet": (unet or "").partition(":")[0], "--text-encoder": text_encoder or ""}
    check_apart(out, {role: Path(text) for role, text in named.items() if text and Path(text).exists()},
                ModelLoadError)
    check_new_folder(out, ModelLoadError)  # before any download
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
    check_apart(out, {"pipeline": base, "--unet": unet_folder, "--text-encoder": text_base}, ModelLoadError)
    with staged_folder(out, ModelLoadError) as staging:
        _write_model(staging, spec, base, unet_folder, text_base, sources,
                     name=name, terms=data_terms or _known_terms(source, unet, text_encoder))
    return out


def _write_model(staging: Path, spec: dict[str, Any], base: Path, unet_folder: Path, text_base: Path,
                 sources: dict[str, Any], name: str | None, terms: str) -> None:
    """Every component into ``staging``, one at a time, each loaded strictly from its copy; then ``model.json``."""
    _check_latent_channels(unet_folder / "config.json", base / "vae" / "config.json")
    where = str(base / PIPELINE_FILE)  # image size and latent scale come from the pipeline's configs
    spec_latent_scale(spec, where)
    factor = 2 ** (len(read_json_object(base / "vae" / "config.json").get("block_out_channels", [0])) - 1)
    image_size = spec_image_size(spec, where, factor)
    hashes: dict[Path, str] = {}
    unet_config = _import_network(unet_folder, staging / "unet", "unet", hashes)
    hidden = _import_text_encoder(text_base, spec, staging, hashes)
    width = unet_config.get("cross_attention_dim")
    if width != hidden:
        raise ModelLoadError(f"the UNet ({unet_folder}) attends to {width}-d text states, but the text encoder "
                             f"({text_base}) gives {hidden}-d ones")
    _import_tokenizer(text_base, spec, staging)
    vae_config = _import_network(base / "vae", staging / "vae", "autoencoder", hashes)
    (staging / "scheduler").mkdir()
    shutil.copy(base / "scheduler" / "scheduler_config.json", staging / "scheduler" / "scheduler_config.json")
    spec.update({
        "name": name or spec["name"],
        "provenance": {"imported_from": sources, "data_terms": terms,
                       "files": {"pipeline": _weight_hashes(base / "vae", hashes)
                                 + _weight_hashes(base / "scheduler", hashes),
                                 "unet": _weight_hashes(unet_folder, hashes),
                                 "text_encoder": _weight_hashes(_text_folder(text_base), hashes)}},
    })
    layers = quarter_resolution_layers(unet_config, vae_config, image_size, unet_folder)
    _write_spec(staging, spec, layers)
    read_spec(staging)  # the checks load_model runs on model.json (format, family, grounding defaults)


def _check_latent_channels(unet_config: Path, vae_config: Path) -> None:
    """A swapped-in UNet must take the autoencoder's latents (checked on the configs, before any weights are read)."""
    if not (unet_config.is_file() and vae_config.is_file()):
        return  # the component loaders name the missing file
    takes = read_json_object(unet_config).get("in_channels", 4)
    gives = read_json_object(vae_config).get("latent_channels", 4)
    if takes != gives:
        raise ModelLoadError(f"the UNet ({unet_config.parent}) takes {takes} latent channels, but the autoencoder "
                             f"({vae_config.parent}) gives {gives}")


# --- components ----------------------------------------------------------------------------------------------------

def _import_network(source: Path, target: Path, part: str, hashes: dict[Path, str]) -> dict[str, Any]:
    """Copy (or, from a legacy ``.bin``, convert) one diffusers component, load the copy strictly, free it, and
    return its config."""
    files = _network_files(source)
    if files is None:  # only a legacy .bin: loaded with weights_only, written as safetensors
        network = load_component(source, part)
        network.save_pretrained(target, safe_serialization=True)
        del network
        gc.collect()
    else:
        _copy_files(source, target, ["config.json", *files], hashes)
    with _named_as_source(target, source):
        network = load_component(target, part)
    config = dict(network.config)
    del network  # freed before the next component is loaded: the peak is one component, not the sum
    gc.collect()
    return config


def _network_files(folder: Path) -> list[str] | None:
    """The weight files ``read_weights`` would read (relative names), or None where that is a legacy ``.bin``."""
    single, index, _legacy = WEIGHT_FILES
    if (folder / single).is_file():
        return [single]
    if (folder / index).is_file():
        return [index, *shard_names(folder, index)]
    return None


def _import_text_encoder(text_base: Path, spec: dict[str, Any], staging: Path, hashes: dict[Path, str]) -> int:
    """Copy the text encoder where it is stored as safetensors of the class medground loads; otherwise (a ``.bin``,
    CXR-BERT's remote-code class) write what was loaded. The copy is loaded strictly; returns its width."""
    source = _text_folder(text_base)
    entry = spec["text_encoder"]
    files = _text_files(source, entry["class"])
    if files is None:
        encoder = load_text_part(text_base, spec, "text_encoder", None)
        encoder.save_pretrained(staging / "text_encoder")
        del encoder
        gc.collect()
    else:
        _copy_files(source, staging / "text_encoder", ["config.json", *files], hashes)
    local = {"text_encoder": {**entry, "source": {"path": "."}}}
    with _named_as_source(staging / "text_encoder", source):
        encoder = load_text_part(staging, local, "text_encoder", None)
    hidden = int(encoder.config.hidden_size)
    del encoder
    gc.collect()
    return hidden


def _text_files(folder: Path, loaded_class: str) -> list[str] | None:
    """Safetensors weight files that may be copied as they are, or None where the weights must be re-serialised."""
    if not (folder / "config.json").is_file():
        return None  # the loader names what is missing
    config = read_json_object(folder / "config.json")
    own_class = (config.get("architectures") or [None])[0] == loaded_class.split(".", 1)[1]
    if not own_class or "auto_map" in config:
        return None
    single, index = TEXT_SAFETENSORS
    if (folder / single).is_file():
        return [single]
    if (folder / index).is_file():
        return [index, *shard_names(folder, index)]
    return None


def _import_tokenizer(text_base: Path, spec: dict[str, Any], staging: Path) -> None:
    """The tokenizer is small: saved by transformers (which records medground's max_length), then reloaded."""
    tokenizer = load_text_part(text_base, spec, "tokenizer", None)
    tokenizer.save_pretrained(staging / "tokenizer")
    local = {"tokenizer": {**spec["tokenizer"], "source": {"path": "."}}}
    with _named_as_source(staging / "tokenizer", text_part_folder(text_base, "tokenizer")):
        load_text_part(staging, local, "tokenizer", None)


def _copy_files(source: Path, target: Path, names: list[str], hashes: dict[Path, str]) -> None:
    """Copy the named files of a component, recording each source file's SHA-256 by its resolved path."""
    for name in names:
        hashes[(source / name).resolve()] = copy_hashed(source / name, target / name)


@contextmanager
def _named_as_source(copy: Path, source: Path) -> Iterator[None]:
    """Errors about a file in the staging copy name the source file it is an exact copy of (the copy is removed)."""
    try:
        yield
    except MedgroundError as exc:
        message = str(exc).replace(str(copy.resolve()), str(source)).replace(str(copy), str(source))
        raise type(exc)(message) from None


# --- model.json --------------------------------------------------------------------------------------------------

def _write_spec(staging: Path, spec: dict[str, Any], layers: list[str]) -> None:
    """``model.json`` as ``save_diffusers_model`` writes it, with the default layers."""
    text_entry, tokenizer_entry = spec.pop("text_encoder"), spec.pop("tokenizer")
    spec["text_encoder"] = {k: v for k, v in text_entry.items() if k not in ("class", "source")}
    spec["tokenizer"] = {k: v for k, v in tokenizer_entry.items() if k not in ("class", "source")}
    full = model_description(spec, text_entry["class"], tokenizer_entry["class"])
    full["grounding_defaults"] = {"cross_attention_layers": layers}
    write_atomic(staging / MODEL_FILE, json_bytes(full))


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
