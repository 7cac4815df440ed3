"""The diffusers family: ``UNet2DConditionModel`` + ``AutoencoderKL`` (Stable Diffusion 1.x/2.x, RoentGen, RoentGen-v2,
Generate-to-Ground's CXR-BERT LDM, RadEdit), with a CLIP or BERT-family text encoder.

Images: grayscale replicated to the autoencoder's input channels and mapped to [-1, 1] as the SD image processor
does; latent = ``latent_dist.mean * scaling_factor``. Text: the last hidden state, padded to the tokenizer's length;
BERT encoders (G2G) may take an attention mask, as G2G feeds them. The schedule's betas and prediction type come from
``scheduler/scheduler_config.json``. Capture installs a processor on each chosen attention module that computes the
probabilities explicitly, hands them over, and is removed again; every other module keeps its fused processor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from medground.backbones.base import AttentionSink, Backbone, NoiseSchedule
from medground.backbones.model_dir import MODEL_FILE, spec_noise_schedule, spec_parts
from medground.backbones.weights import (
    check_finite,
    check_size,
    inside,
    load_state_strict,
    read_json_object,
    read_safetensors,
    read_torch_state,
    shard_names,
)
from medground.errors import ModelLoadError, WeightsNotFoundError
from medground.outputs import json_bytes, write_atomic

PIPELINE_FILE = "model_index.json"
"""What makes a folder a diffusers pipeline (``load_model`` takes one as it is)."""
NETWORKS = {"unet": "UNet2DConditionModel", "autoencoder": "AutoencoderKL"}
"""The diffusers classes this family builds (from their ``config.json``); nothing else is instantiated."""
PIPELINE_FOLDERS = {"unet": "unet", "autoencoder": "vae"}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.bin")
TEXT_CLASSES = {"CLIPTextModel": "transformers.CLIPTextModel", "CLIPTextModelWithProjection": None,
                "BertModel": "transformers.BertModel", "CXRBertModel": "transformers.BertModel"}
"""Text encoder classes a pipeline may name -> the class medground loads (CXR-BERT's remote-code class is a BERT whose
first output is the last hidden state, which ``BertModel`` gives without running remote code)."""
TOKENIZER_CLASSES = {"CLIPTokenizer": "transformers.CLIPTokenizer", "CLIPTokenizerFast": "transformers.CLIPTokenizer",
                     "BertTokenizer": "transformers.BertTokenizer", "BertTokenizerFast": "transformers.BertTokenizer",
                     "CXRBertTokenizer": "transformers.BertTokenizer"}


class DiffusersBackbone(Backbone):
    """A Backbone over diffusers' UNet and VAE, so SD-style models ground through the same engine as MONAI's.

    Args:
        text_attention_mask: feed the BERT text encoder each prompt's attention mask, as G2G does (the empty null
            prompt stays unmasked).
        *args: ``Backbone``'s arguments.
        **kwargs: ``Backbone``'s keyword arguments.
    """

    family = "diffusers"
    default_grounding = {"inference_steps": 300, "gaussian_sigma": 2.5}
    folder_hint = f"a diffusers pipeline folder has {PIPELINE_FILE}"

    @classmethod
    def spec_of_folder(cls, folder: Path) -> dict[str, Any] | None:
        return spec_from_pipeline(folder) if (folder / PIPELINE_FILE).is_file() else None

    def __init__(self, *args: Any, text_attention_mask: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text_attention_mask = text_attention_mask
        """G2G feeds its BERT encoder the prompt's attention mask (the empty null prompt stays unmasked)."""

    @classmethod
    def from_spec(cls, model_dir: Path, spec: dict[str, Any], text_source: dict[str, str] | None
                  ) -> DiffusersBackbone:
        autoencoder = load_network(model_dir, spec, "autoencoder")
        factor = 2 ** (len(autoencoder.config.block_out_channels) - 1)
        text_entry = spec.get("text_encoder") if isinstance(spec.get("text_encoder"), dict) else {}
        return cls(autoencoder=autoencoder, unet=load_network(model_dir, spec, "unet"),
                   text_attention_mask=bool(text_entry.get("attention_mask", False)),
                   **spec_parts(model_dir, spec, text_source, factor))

    def fresh_unet(self) -> nn.Module:
        return type(self.unet).from_config(self.unet.config)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        channels = self.autoencoder.config.in_channels
        pixels = images.expand(-1, channels, -1, -1) * 2.0 - 1.0
        return self.autoencoder.encode(pixels).latent_dist.mean * self.latent_scale

    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_text_length,
                                truncation=True, return_tensors="pt")
        ids = tokens.input_ids.to(self.device)
        if not self.text_attention_mask:
            return self.text_encoder(ids)[0]
        # G2G masks the padding of its prompts; diffusers encodes the empty null prompt unmasked (every position)
        mask = tokens.attention_mask.clone()
        mask[[i for i, prompt in enumerate(prompts) if prompt == ""]] = 1
        return self.text_encoder(ids, attention_mask=mask.to(self.device))[0]

    def predict(self, latents: torch.Tensor, timestep: int | torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        timesteps = torch.as_tensor(timestep, device=latents.device).reshape(-1)
        return self.unet(latents, timesteps, encoder_hidden_states=context, return_dict=False)[0]

    def attention_layers(self, kind: Literal["cross", "self"] = "cross") -> list[str]:
        from diffusers.models.attention_processor import Attention

        suffix = "attn2" if kind == "cross" else "attn1"
        return [name for name, module in self.unet.named_modules()
                if name.endswith(suffix) and isinstance(module, Attention)]

    def family_defaults(self) -> dict[str, Any]:
        """Every cross-attention layer whose grid is 16x16 for a 64x64 latent (SD: down_blocks.2, up_blocks.1)."""
        return {**self.default_grounding, "cross_attention_layers": self.layers_at_quarter_resolution()}

    def _install_capture(self, paths: Sequence[str], sink: AttentionSink) -> Callable[[], None]:
        saved = []
        for path in paths:
            module = self.unet.get_submodule(path)
            saved.append((module, module.get_processor()))
            module.set_processor(_CapturingProcessor(path, sink))

        def undo() -> None:
            for module, processor in saved:
                module.set_processor(processor)

        return undo


class _CapturingProcessor:
    """Explicit attention (the math of diffusers' ``AttnProcessor``) that hands its probabilities to a sink."""

    def __init__(self, path: str, sink: AttentionSink) -> None:
        self.path = path
        self.sink = sink

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial_shape = None
        if hidden_states.ndim == 4:
            spatial_shape = hidden_states.shape
            batch, channels = spatial_shape[:2]
            hidden_states = hidden_states.view(batch, channels, -1).transpose(1, 2)
        batch, length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probabilities = attn.get_attention_scores(query, key, attention_mask)
        self.sink(self.path, probabilities.reshape(-1, attn.heads, *probabilities.shape[1:]))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if spatial_shape is not None:
            hidden_states = hidden_states.transpose(-1, -2).reshape(spatial_shape)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def network_class(part: str) -> type[nn.Module]:
    """The diffusers class of ``part`` (``NETWORKS``), imported only when a diffusers model is read."""
    import diffusers

    return getattr(diffusers, NETWORKS[part])


def load_network(model_dir: Path, spec: dict[str, Any], part: str) -> nn.Module:
    """The ``part`` network of a model directory (its ``path`` entry names the component folder).

    Args:
        model_dir: the model directory.
        spec: its description; ``spec[part]["path"]`` is the component folder, inside ``model_dir``.
        part: ``unet`` or ``autoencoder``.

    Raises:
        ModelLoadError: a missing entry, a path leaving the directory, or weights that do not load strictly.
    """
    where = f"{model_dir / MODEL_FILE} [{part}]"
    entry = spec.get(part)
    if not isinstance(entry, dict):
        raise ModelLoadError(f"{where}: missing or not an object")
    return load_component(inside(model_dir, entry.get("path"), where), part)


def load_component(folder: Path, part: str) -> nn.Module:
    """Build ``UNet2DConditionModel`` / ``AutoencoderKL`` from the folder's ``config.json`` and load its weights
    strictly (every parameter filled, no key left over, floating and finite values).

    The network is built on the meta device and takes the loaded tensors themselves, so loading holds one copy of
    the weights, not a random initialisation beside them (a full-size SD UNet: 3.5 GB instead of 7)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsNotFoundError(f"{part} config not found: {config_path}")
    config = read_json_object(config_path)
    expected = NETWORKS[part]
    if config.get("_class_name") != expected:
        raise ModelLoadError(f"{config_path}: _class_name is {config.get('_class_name')!r}; the diffusers family "
                             f"loads {expected} here")
    network = _build_component(config, config_path, part, torch.device("meta"))
    weights, origin = read_weights(folder)
    load_state_strict(network, weights, origin)
    if any(tensor.is_meta for tensor in (*network.parameters(), *network.buffers())):
        # a buffer outside the state dict (non-persistent) has no values on meta: build for real and copy in
        network = _build_component(config, config_path, part, torch.device("cpu"))
        load_state_strict(network, weights, origin)
    return network.eval().requires_grad_(False)


def _build_component(config: dict[str, Any], config_path: Path, part: str, device: torch.device) -> nn.Module:
    """The network a config describes, on ``device``; on the meta device (always built first) it is refused above
    ``MAX_PARAMETERS`` before anything is allocated."""
    try:
        with device:
            network = network_class(part).from_config(config)
        return check_size(network, str(config_path)) if device.type == "meta" else network
    except (TypeError, ValueError, KeyError, AssertionError, IndexError, AttributeError) as exc:
        raise ModelLoadError(f"{config_path} does not describe a buildable {NETWORKS[part]}: {type(exc).__name__}: "
                             f"{exc}") from exc


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a diffusers component folder: one safetensors file, a sharded set, or a legacy ``.bin`` (read
    with ``weights_only``, never unpickling code), each tensor read once into memory of its own."""
    single, index, legacy = (folder / name for name in WEIGHT_FILES)
    if single.is_file():
        return read_safetensors(single), str(single)
    if index.is_file():
        state: dict[str, torch.Tensor] = {}
        for shard in shard_names(folder, index.name):
            state.update(read_safetensors(folder / shard))
        return state, str(index)
    if legacy.is_file():
        return read_torch_state(legacy), str(legacy)
    raise WeightsNotFoundError(f"no weights in {folder}: looked for {list(WEIGHT_FILES)}")


def noise_schedule_from_scheduler(config_path: Path) -> NoiseSchedule:
    """Betas and prediction type from a diffusers ``scheduler_config.json`` (the grid is the recipe's, not its)."""
    config = read_json_object(config_path)
    if config.get("trained_betas") is not None:
        raise ModelLoadError(f"{config_path}: trained_betas are not supported (only scaled_linear and linear)")
    if config.get("rescale_betas_zero_snr"):
        raise ModelLoadError(f"{config_path}: rescale_betas_zero_snr is not supported")
    values = {"num_train_timesteps": config.get("num_train_timesteps", 1000),
              "beta_schedule": config.get("beta_schedule", "linear"), "beta_start": config.get("beta_start", 0.0001),
              "beta_end": config.get("beta_end", 0.02), "prediction_type": config.get("prediction_type", "epsilon")}
    return spec_noise_schedule(values, str(config_path))


def spec_from_pipeline(folder: Path, text_attention_mask: bool | None = None) -> dict[str, Any]:
    """The model description of a diffusers pipeline folder (``model_index.json``), built in memory."""
    index_path = folder / PIPELINE_FILE
    if not index_path.is_file():
        raise WeightsNotFoundError(f"no {PIPELINE_FILE} in {folder}")
    index = read_json_object(index_path)
    for part, subfolder in PIPELINE_FOLDERS.items():
        declared = index.get(subfolder)
        if not (isinstance(declared, list) and len(declared) == 2 and declared[1] == NETWORKS[part]):
            raise ModelLoadError(f"{index_path}: {subfolder!r} is {declared!r}; the diffusers family needs "
                                 f"['diffusers', '{NETWORKS[part]}']")
    text_class = _mapped(index, "text_encoder", TEXT_CLASSES, index_path)
    tokenizer_class = _mapped(index, "tokenizer", TOKENIZER_CLASSES, index_path)
    vae_config = read_json_object(folder / "vae" / "config.json")
    unet_config = read_json_object(folder / "unet" / "config.json")
    factor = 2 ** (len(vae_config.get("block_out_channels", [0])) - 1)
    if vae_config.get("shift_factor") not in (None, 0, 0.0):
        raise ModelLoadError(f"{folder / 'vae' / 'config.json'}: shift_factor is not supported (not an SD-1/2 VAE)")
    bert = text_class == "transformers.BertModel"
    mask = bert if text_attention_mask is None else text_attention_mask
    tokenizer_entry = {"class": tokenizer_class, "source": {"path": "."}, **({"max_length": 77} if bert else {})}
    return {
        "family": "diffusers",
        "name": folder.name,
        "unet": {"path": "unet"},
        "autoencoder": {"path": "vae"},
        "text_encoder": {"class": text_class, "source": {"path": "."}, "attention_mask": mask},
        "tokenizer": tokenizer_entry,
        "noise_schedule": noise_schedule_from_scheduler(folder / "scheduler" / "scheduler_config.json").to_dict(),
        "latent_scale": vae_config.get("scaling_factor", 0.18215),
        "image_size": unet_config.get("sample_size", 64) * factor,
        "grounding_defaults": {},
        "provenance": {"pipeline": str(folder), "pipeline_class": index.get("_class_name")},
    }


def _mapped(index: dict[str, Any], part: str, classes: dict[str, str | None], where: Path) -> str:
    declared = index.get(part)
    name = declared[1] if isinstance(declared, list) and len(declared) == 2 else None
    if classes.get(name) is None:
        supported = sorted(k for k, v in classes.items() if v)
        raise ModelLoadError(f"{where}: {part} is {declared!r}; supported classes: {supported}")
    return str(classes[name])


def save_diffusers_model(out_dir: Path, spec: dict[str, Any], unet: nn.Module, autoencoder: nn.Module,
                         text_encoder: nn.Module, tokenizer: Any) -> Path:
    """Write a medground model directory of this family: diffusers component folders plus ``model.json``.

    Args:
        out_dir: the folder to write (created if needed).
        spec: the description's other entries (name, noise schedule, latent scale, image size, provenance, ...);
            its ``text_encoder`` and ``tokenizer`` entries are merged into those written here.
        unet: a ``UNet2DConditionModel``, written to ``unet/``; NaN or infinite weights are a ModelLoadError.
        autoencoder: an ``AutoencoderKL``, written to ``vae/``.
        text_encoder: a transformers CLIP or BERT text model, written to ``text_encoder/``.
        tokenizer: its tokenizer, written to ``tokenizer/``.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_finite(unet, "unet")
    unet.save_pretrained(out_dir / "unet")
    autoencoder.save_pretrained(out_dir / "vae")
    text_encoder.save_pretrained(out_dir / "text_encoder")
    tokenizer.save_pretrained(out_dir / "tokenizer")
    text_class = "transformers.BertModel" if "Bert" in type(text_encoder).__name__ else "transformers.CLIPTextModel"
    tokenizer_class = "transformers.BertTokenizer" if "Bert" in type(tokenizer).__name__ else \
        "transformers.CLIPTokenizer"
    write_atomic(out_dir / MODEL_FILE, json_bytes(model_description(spec, text_class, tokenizer_class)))
    return out_dir


def model_description(spec: dict[str, Any], text_class: str, tokenizer_class: str) -> dict[str, Any]:
    """``model.json`` of a model directory of this family (component folders as diffusers saves them), with the
    text parts' classes and the rest of ``spec``; its text entries carry no class or source of their own."""
    from medground.backbones.model_dir import MODEL_FORMAT

    return {"format": MODEL_FORMAT, "family": "diffusers", "unet": {"path": "unet"}, "autoencoder": {"path": "vae"},
            **spec, "text_encoder": {"class": text_class, "source": {"path": "."}, **spec.get("text_encoder", {})},
            "tokenizer": {"class": tokenizer_class, "source": {"path": "."}, **spec.get("tokenizer", {})}}


PROMPT_LENGTH = 77
"""The text length of the dry pass that finds grid sides (only shapes matter)."""


def quarter_resolution_layers(unet_config: dict[str, Any], vae_config: dict[str, Any], image_size: int,
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
