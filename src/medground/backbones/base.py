"""The backbone seam: what the engine, the read-out and the Grounder need from a latent diffusion model.

A family module (``monai``, ``diffusers``) implements :class:`Backbone` for one kind of network code; nothing
outside the family modules knows a UNet's call convention, an autoencoder's encode API or how attention
probabilities are reached. ``model.json``'s ``family`` picks the implementation through :data:`FAMILIES`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medground.errors import ConfigError, ModelLoadError

PredictionType = Literal["v_prediction", "epsilon"]
MAX_TRAIN_TIMESTEPS = 10_000
"""Diffusion models train on 1000 timesteps; a larger table is a broken description, not a model."""
AttentionSink = Callable[[str, torch.Tensor], None]
"""Called inside a pass with (module path, probabilities of shape (batch, heads, queries, keys))."""


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule of a diffusion model: its betas and what the network predicts."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0205
    prediction_type: PredictionType = "v_prediction"

    def __post_init__(self) -> None:
        steps = self.num_train_timesteps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_TRAIN_TIMESTEPS:
            raise ModelLoadError(f"num_train_timesteps must be an integer in [2, {MAX_TRAIN_TIMESTEPS}], got {steps!r}")
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ModelLoadError(f"beta_schedule must be 'scaled_linear' or 'linear', got {self.beta_schedule!r}")
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ModelLoadError(f"prediction_type must be 'v_prediction' or 'epsilon', got {self.prediction_type!r}")
        for key in ("beta_start", "beta_end"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 < value < 1 or not math.isfinite(value):
                raise ModelLoadError(f"{key} must be a number in (0, 1), got {value!r}")

    def alphas_cumprod(self) -> torch.Tensor:
        """Cumulative products of (1 - beta_t), float32, built as MONAI's and diffusers' DDIM schedulers do."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2
        else:
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0)

    def to_dict(self) -> dict[str, Any]:
        """The schedule as ``model.json`` records it (``noise_schedule``)."""
        return asdict(self)


class Backbone(ABC):
    """A frozen text-to-image LDM as the grounding engine sees it.

    Images enter as (B, 1, S, S) float tensors in [0, 1]; latents leave scaled and ready for the UNet. Text is
    embedded padded to ``max_text_length`` with no attention mask unless the family's recipe says otherwise.

    Args:
        autoencoder: maps images to latents (each family knows its encode API).
        unet: the denoising UNet, conditioned on text through cross-attention.
        text_encoder: gives the hidden states the UNet attends to.
        tokenizer: the text encoder's tokenizer; its ``model_max_length`` is the padded prompt length.
        noise_schedule: the training schedule (betas, prediction type).
        latent_scale: latents are the autoencoder's posterior mean times this.
        image_size: S, the side of the square input the model was trained at.
        name: how runs, output records and messages name the model.
        description: the description it was read from (``model.json``); its ``grounding_defaults`` go on top of
            the family's. None: empty.
    """

    family: ClassVar[str]
    default_grounding: ClassVar[dict[str, Any]] = {}
    """The family's read-out defaults (layers, grid, window, smoothing), before the model directory's own."""
    folder_hint: ClassVar[str] = ""
    """What a folder of this family's own layout holds (for the message when no family recognises a folder)."""

    def __init__(self, autoencoder: nn.Module, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any,
                 noise_schedule: NoiseSchedule, latent_scale: float, image_size: int, name: str,
                 description: dict[str, Any] | None = None) -> None:
        self.autoencoder = autoencoder
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.noise_schedule = noise_schedule
        self.latent_scale = latent_scale
        """Latents are the autoencoder's posterior mean times this."""
        self.image_size = image_size
        self.name = name
        self.description = description or {}

    # --- reading a model ----------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_spec(cls, model_dir: Path, spec: dict[str, Any], text_source: dict[str, str] | None) -> Backbone:
        """Build the model a description (``model.json``, or ``spec_of_folder``'s) gives, reading from ``model_dir``;
        ``text_source`` replaces where the text encoder and tokenizer come from.

        Args:
            model_dir: the folder the description's relative paths are read from.
            spec: the description, already read and checked (``model_dir.read_spec``).
            text_source: ``{"path": DIR}`` or ``{"hub_id": ID, "revision": REV}`` (``model_dir.parse_source``);
                None: the description's own.

        Raises:
            ModelLoadError: a part that does not load strictly (WeightsNotFoundError: its files are not there).
        """

    @classmethod
    def spec_of_folder(cls, folder: Path) -> dict[str, Any] | None:
        """The description of a folder in this family's own layout (no ``model.json``), or None if it is not one."""
        return None

    # --- the networks -------------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """The torch modules of this model by part name."""
        return {"unet": self.unet, "autoencoder": self.autoencoder, "text_encoder": self.text_encoder}

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are (``to`` moves every network together)."""
        return next(self.networks()["unet"].parameters()).device

    def to(self, device: torch.device | str) -> Backbone:
        """Move every network to ``device``; returns the model itself, so calls chain."""
        for network in self.networks().values():
            network.to(device)
        return self

    @property
    def max_text_length(self) -> int:
        """Tokens every prompt is padded to (the tokenizer's ``model_max_length``)."""
        return int(self.tokenizer.model_max_length)

    # --- the operations the engine uses ---------------------------------------------------------------------
    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) in [0, 1] -> scaled latents: the posterior mean times the latent scale (never a sample)."""

    @abstractmethod
    def embed_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts padded to ``max_text_length`` -> the hidden states the UNet attends to, (B, L, D)."""

    @abstractmethod
    def predict(self, latents: torch.Tensor, timestep: int | torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's output (epsilon or v, see ``noise_schedule``) at one timestep shared by the batch, or at one
        timestep per batch element (a tensor as long as the batch).

        Args:
            latents: (B, C, h, w) scaled latents.
            timestep: one timestep for the batch, or a tensor of B timesteps.
            context: (B, L, D) text hidden states (``embed_text``).
        """

    @abstractmethod
    def attention_layers(self, kind: Literal["cross", "self"] = "cross") -> list[str]:
        """Module paths of the text cross-attention (``attn2``) or self-attention (``attn1``) layers, in order."""

    @abstractmethod
    def _install_capture(self, paths: Sequence[str], sink: AttentionSink) -> Callable[[], None]:
        """Make ``paths`` compute explicit probabilities and hand them to ``sink``; return the undo."""

    # --- shared behaviour ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self, paths: Sequence[str], sink: AttentionSink) -> Iterator[None]:
        """Within the block, each layer in ``paths`` calls ``sink(path, probabilities)`` during every pass.

        Every other attention layer keeps its fused kernel. An exception raised by ``sink`` propagates out of the
        pass, which is how the engine stops a conditional pass after the last layer it records. On exit the model
        is exactly as before.
        """
        known = set(self.attention_layers("cross")) | set(self.attention_layers("self"))
        unknown = [path for path in paths if path not in known]
        if unknown:
            raise ConfigError(f"{unknown} are not attention layers of model {self.name!r}")
        undo = self._install_capture(list(paths), sink)
        try:
            yield
        finally:
            undo()

    def check_layers(self, paths: Sequence[str], kind: Literal["cross", "self"] = "cross") -> None:
        """A ConfigError listing the model's layers unless every path is one of its ``kind``-attention layers, so a
        wrong path fails before any UNet work."""
        available = self.attention_layers(kind)
        missing = [path for path in paths if path not in available]
        if missing:
            raise ConfigError(f"attention layers {missing} are not {kind}-attention layers of model {self.name!r}; "
                              f"its layers are {available}")

    def self_attention_of(self, cross_path: str) -> str:
        """The self-attention layer in the same transformer block as cross-attention layer ``cross_path``."""
        if not cross_path.endswith("attn2"):
            raise ConfigError(f"{cross_path!r} is not a cross-attention (attn2) path")
        path = cross_path[: -len("attn2")] + "attn1"
        self.check_layers([path], "self")
        return path

    @property
    def latent_side(self) -> int:
        """Side of the latent grid for the model's input size (found by encoding one blank image, once)."""
        if not hasattr(self, "_latent_side"):
            with torch.no_grad():
                blank = torch.zeros(1, 1, self.image_size, self.image_size, device=self.device)
                self._latent_side = int(self.encode_images(blank).shape[-1])
        return self._latent_side

    def untrained(self, seed: int) -> Backbone:
        """The same architecture with fresh random weights in the UNet and the text encoder (autoencoder and
        tokenizer kept): the control that shows what training contributes."""
        torch.manual_seed(seed)
        clone = copy.copy(self)
        clone.unet = self.fresh_unet().to(self.device).eval().requires_grad_(False)
        encoder = self.text_encoder
        clone.text_encoder = type(encoder)(encoder.config).to(self.device).eval().requires_grad_(False)
        clone.name = f"{self.name}-untrained-{seed}"
        clone.__dict__.pop("_grid_sides", None)
        clone.__dict__.pop("_compiled", None)
        return clone

    def compiled(self) -> Backbone:
        """The same model (every weight shared) with its UNet under ``torch.compile``, made once per model so every
        Grounder on it shares the compiled code: inductor with frozen weights (constant-folded, and on the CPU
        prepacked for oneDNN, which also picks its own memory layout such as channels_last), static shapes (one
        compile per batch shape), and on CUDA CUDA graphs (``reduce-overhead``). For passes without attention
        capture only: capture hooks into the eager modules and cuts passes short."""
        if "_compiled" not in self.__dict__:
            clone = copy.copy(self)
            clone.unet = torch.compile(self.unet, mode="reduce-overhead" if self.device.type == "cuda" else None,
                                       dynamic=False, options={"freezing": True})
            self._compiled = clone
        return self._compiled

    @abstractmethod
    def fresh_unet(self) -> nn.Module:
        """A randomly initialised UNet of this model's architecture."""

    def attention_grid_sides(self) -> dict[str, int]:
        """Side of each cross-attention layer's square query grid, from one pass on a blank image (once)."""
        if not hasattr(self, "_grid_sides"):
            sides: dict[str, int] = {}

            def sink(path: str, probabilities: torch.Tensor) -> None:
                sides[path] = math.isqrt(probabilities.shape[2])

            blank = torch.zeros(1, 1, self.image_size, self.image_size, device=self.device)
            with torch.no_grad(), self.capture(self.attention_layers(), sink):
                self.predict(self.encode_images(blank), 0, self.embed_text([""]))
            self._grid_sides = sides
        return self._grid_sides

    def layers_at_quarter_resolution(self) -> list[str]:
        """Cross-attention layers whose grid is a quarter of the latent's side (16x16 for a 64x64 latent)."""
        quarter = self.latent_side // 4
        layers = [path for path, side in self.attention_grid_sides().items() if side == quarter]
        if not layers:
            raise ConfigError(f"model {self.name!r} has no cross-attention layer at {quarter}x{quarter}; name the "
                              f"layers (cross_attention_layers) from {self.attention_layers()}")
        return layers

    def grounding_defaults(self) -> dict[str, Any]:
        """The family's read-out defaults with the model directory's ``grounding_defaults`` on top."""
        return {**self.family_defaults(), **self.description.get("grounding_defaults", {})}

    def family_defaults(self) -> dict[str, Any]:
        """The family's read-out defaults; a family overrides this for defaults that depend on the UNet (layers)."""
        return dict(self.default_grounding)


FAMILIES: dict[str, str] = {
    "monai-ldm": "medground.backbones.monai:MonaiBackbone",
    "diffusers": "medground.backbones.diffusers:DiffusersBackbone",
}
"""``model.json`` ``family`` -> implementing class (imported on first use, so a family's library is only needed
when one of its models is loaded). Adding a family = one module + one entry here."""


def family_class(family: object, where: str) -> type[Backbone]:
    """The Backbone class of ``family``, imported now; an unknown family is a ModelLoadError naming ``where``."""
    if family not in FAMILIES:
        raise ModelLoadError(f"{where}: unknown model family {family!r}; known: {sorted(FAMILIES)}")
    module_name, _, class_name = FAMILIES[str(family)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)
