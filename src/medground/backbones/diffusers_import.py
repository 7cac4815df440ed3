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
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medground.backbones.diffusers import (
    TEXT_CLASSES,
    WEIGHT_FILES,
    _CapturingProcessor,
    load_component,
    network_class,
    spec_from_pipeline,
)
from medground.backbones.model_dir import (
    MODEL_FILE,
    MODEL_FORMAT,
    PIPELINE_FILE,
    hub_snapshot,
    inside,
    load_text_part,
    parse_source,
    read_json_object,
    read_spec,
    sha256_of,
    spec_image_size,
    spec_latent_scale,
    text_part_folder,
)
from medground.errors import MedgroundError, ModelLoadError

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
    """Import ``source`` (pipeline folder or ``hub-id[@revision]``) into the model directory ``out``, which must not
    exist yet (or be an empty folder). Nothing is written until every source is found; on failure nothing is left."""
    out = Path(out)
    named = {"pipeline": source, "--unet": (unet or "").partition(":")[0], "--text-encoder": text_encoder or ""}
    _check_no_overlap(out, {role: Path(text) for role, text in named.items() if text and Path(text).exists()})
    _check_out_free(out)  # before any download
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
    _check_no_overlap(out, {"pipeline": base, "--unet": unet_folder, "--text-encoder": text_base})  # as resolved
    with _staging(out) as staging:
        _write_model(staging, spec, base, unet_folder, text_base, sources,
                     name=name, terms=data_terms or _known_terms(source, unet, text_encoder))
        _publish(staging, out)
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
    layers = _quarter_resolution_layers(unet_config, vae_config, image_size, unet_folder)
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


# --- the destination ---------------------------------------------------------------------------------------------

def _check_out_free(out: Path) -> None:
    """``--out`` is a new folder (or an empty one): an import never mixes with or replaces existing files."""
    if out.is_symlink():
        raise ModelLoadError(f"--out {out} is a symbolic link; name a new folder (not a link)")
    if not out.exists():
        return
    if not out.is_dir():
        raise ModelLoadError(f"--out {out} exists and is not a folder; choose a new folder")
    if (out / MODEL_FILE).exists():
        raise ModelLoadError(f"{out} already holds a model; choose another --out")
    entries = sorted(entry.name for entry in out.iterdir())
    if entries:
        raise ModelLoadError(f"--out {out} already exists and is not empty ({len(entries)} entries, e.g. "
                             f"{entries[0]!r}); choose a new folder, or remove this one first")


def _check_no_overlap(out: Path, sources: dict[str, Path]) -> None:
    """Writing into a source (or a source into the new folder) would corrupt what is being read and hashed."""
    target = out.resolve()
    for role, folder in sources.items():
        real = folder.resolve()
        if target == real:
            raise ModelLoadError(f"--out {out} is the {role} source folder itself; choose a new folder")
        if target.is_relative_to(real):
            raise ModelLoadError(f"--out {out} lies inside the {role} source folder {folder}; choose a folder "
                                 "outside it")
        if real.is_relative_to(target):
            raise ModelLoadError(f"the {role} source folder {folder} lies inside --out {out}; choose a folder "
                                 "that does not contain the source")


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden sibling of ``out`` (same file system, so the final rename is atomic), removed on any failure with
    the parent folders it needed; a write error (disk full, permissions) is a ModelLoadError naming ``out``."""
    created = [parent for parent in reversed(out.absolute().parents) if not parent.exists()]
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.absolute().parent))
    except OSError as exc:
        _remove_created(created)
        raise ModelLoadError(f"cannot create the folder for --out {out}: {exc.strerror or exc}") from None
    try:
        yield staging.resolve()
    except MedgroundError:
        _discard(staging, created)
        raise
    except OSError as exc:
        _discard(staging, created)
        raise ModelLoadError(f"cannot write the model for --out {out}: {exc}; nothing was left behind") from None
    except BaseException:
        _discard(staging, created)
        raise


def _discard(staging: Path, created: list[Path]) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    _remove_created(created)


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def _publish(staging: Path, out: Path) -> None:
    """The complete, checked folder becomes ``out`` in one rename (an empty ``out`` is replaced)."""
    try:
        os.replace(staging, out)
    except OSError as exc:
        raise ModelLoadError(f"cannot move the finished model into --out {out}: {exc.strerror or exc} (was it "
                             "created meanwhile?)") from None


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
        return [index, *_shards(folder, index)]
    return None


def _shards(folder: Path, index_name: str) -> list[str]:
    index = folder / index_name
    shards = read_json_object(index).get("weight_map")
    if not isinstance(shards, dict) or not all(isinstance(shard, str) for shard in shards.values()):
        raise ModelLoadError(f"{index}: 'weight_map' must map weight names to shard file names")
    for shard in shards.values():
        inside(folder, shard, str(index))  # no shard outside the component folder
    return sorted(set(shards.values()))


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
        return [index, *_shards(folder, index)]
    return None


def _import_tokenizer(text_base: Path, spec: dict[str, Any], staging: Path) -> None:
    """The tokenizer is small: saved by transformers (which records medground's max_length), then reloaded."""
    tokenizer = load_text_part(text_base, spec, "tokenizer", None)
    tokenizer.save_pretrained(staging / "tokenizer")
    local = {"tokenizer": {**spec["tokenizer"], "source": {"path": "."}}}
    with _named_as_source(staging / "tokenizer", text_part_folder(text_base, "tokenizer")):
        load_text_part(staging, local, "tokenizer", None)


def _copy_files(source: Path, target: Path, names: list[str], hashes: dict[Path, str]) -> None:
    for name in names:
        _copy_hashed(source / name, target / name, hashes)


def _copy_hashed(source: Path, target: Path, hashes: dict[Path, str]) -> None:
    """Stream ``source`` into ``target`` in 1 MiB chunks, hashing the bytes as they pass: the copy that is loaded
    and checked is byte for byte the file whose SHA-256 is recorded, and no file is ever held in memory."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as reader, target.open("xb") as writer:
        for chunk in iter(lambda: reader.read(CHUNK), b""):
            digest.update(chunk)
            writer.write(chunk)
    hashes[source.resolve()] = digest.hexdigest()


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
    """``model.json`` with the keys, order and values that ``save_diffusers_model`` writes, and the default layers."""
    text_entry, tokenizer_entry = spec.pop("text_encoder"), spec.pop("tokenizer")
    spec["text_encoder"] = {k: v for k, v in text_entry.items() if k not in ("class", "source")}
    spec["tokenizer"] = {k: v for k, v in tokenizer_entry.items() if k not in ("class", "source")}
    full = {"format": MODEL_FORMAT, "family": "diffusers", "unet": {"path": "unet"}, "autoencoder": {"path": "vae"},
            **spec,
            "text_encoder": {"class": text_entry["class"], "source": {"path": "."}, **spec["text_encoder"]},
            "tokenizer": {"class": tokenizer_entry["class"], "source": {"path": "."}, **spec["tokenizer"]}}
    full["grounding_defaults"] = {"cross_attention_layers": layers}
    (staging / MODEL_FILE).write_text(json.dumps(full, indent=2) + "\n")


def _quarter_resolution_layers(unet_config: dict[str, Any], vae_config: dict[str, Any], image_size: int,
                               unet_folder: Path) -> list[str]:
    """The cross-attention layers whose grid side is a quarter of the latent's, as ``layers_at_quarter_resolution``
    finds them on the loaded model: one pass of a blank image through the autoencoder's encoder and the UNet. Grid
    sides depend only on shapes, so the networks are built on the meta device (no weights, no arithmetic); where
    an operation has no meta kernel the same pass runs on randomly initialised CPU networks."""
    try:
        latent_side, sides = _grid_sides(unet_config, vae_config, image_size, torch.device("meta"))
    except Exception:  # meta is only a shortcut (an operation may lack a meta kernel); the CPU pass is the reference
        try:
            latent_side, sides = _grid_sides(unet_config, vae_config, image_size, torch.device("cpu"))
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise ModelLoadError(f"the UNet ({unet_folder}) cannot run on the autoencoder's latents: "
                                 f"{type(exc).__name__}: {exc}") from None
    quarter = latent_side // 4
    layers = [path for path, side in sides.items() if side == quarter]
    if not layers:
        raise ModelLoadError(f"the UNet ({unet_folder}) has no cross-attention layer at {quarter}x{quarter} for a "
                             f"{latent_side}x{latent_side} latent (grid sides: {sorted(set(sides.values()))}); "
                             "medground cannot choose its default layers")
    return layers


def _grid_sides(unet_config: dict[str, Any], vae_config: dict[str, Any], image_size: int,
                device: torch.device) -> tuple[int, dict[str, int]]:
    """Latent side and each cross-attention layer's grid side, in the order the UNet runs them."""
    from diffusers.models.attention_processor import Attention

    with device:
        autoencoder: nn.Module = network_class("autoencoder").from_config(vae_config)
        unet: nn.Module = network_class("unet").from_config(unet_config)
    sides: dict[str, int] = {}

    def sink(path: str, probabilities: torch.Tensor) -> None:
        sides[path] = math.isqrt(probabilities.shape[2])

    for path, module in unet.named_modules():
        if path.endswith("attn2") and isinstance(module, Attention):
            module.set_processor(_CapturingProcessor(path, sink))
    with torch.no_grad():
        pixels = torch.zeros(1, autoencoder.config.in_channels, image_size, image_size, device=device)
        latents = autoencoder.encode(pixels).latent_dist.mean
        context = torch.zeros(1, PROMPT_LENGTH, unet.config.cross_attention_dim, device=device)
        unet(latents, torch.zeros(1, device=device, dtype=torch.long), encoder_hidden_states=context)
    return int(latents.shape[-1]), sides


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
