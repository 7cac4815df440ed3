"""Every hyperparameter of the grounding recipe, in one frozen dataclass, plus named presets.

The ``paper`` preset reproduces the official code of Vilouras et al. (arXiv 2404.12920) including its
quirks (a 334-step trailing grid from "300 steps", window positions 120..179, the empty-string
unconditional prompt); cleaner choices belong in other presets, never silently in ``paper``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from medground.errors import ConfigError

PAPER_CROSS_ATTENTION_LAYERS = (
    "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "middle_block.attention.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn2",
)


@dataclass(frozen=True)
class GroundingConfig:
    """How a phrase's cross-attention is read out of a DDIM inversion and turned into a heatmap."""

    inference_steps: int = 300
    """Nominal DDIM steps; with ``trailing`` spacing and ratio 1000 // 300 = 3 the grid has 334 steps."""
    timestep_spacing: Literal["trailing", "leading"] = "trailing"
    window_start: int | None = None
    """First grid position whose cross-attention is recorded; None: N//2 - N//10 (N = inference_steps)."""
    window_stop: int | None = None
    """One past the last recorded grid position; None: N//2 + N//10."""
    cross_attention_layers: tuple[str, ...] = PAPER_CROSS_ATTENTION_LAYERS
    """Module paths of the recorded cross-attention blocks (paths, not indices: orders differ by library)."""
    token_rule: Literal["between_special"] = "between_special"
    """Which token positions of the phrase are averaged: all between the start and end tokens."""
    unconditional_prompt: str = ""
    guidance_scale: float = 0.0
    """0: the inverted trajectory follows the unconditional prediction only (the paper's setting)."""
    normalise_each_map: bool = True
    """Min-max normalise every (layer, step) map before averaging, as the official code does."""
    upsample_size: int | None = None
    """Side of the square map the attention is resized to; None: the model's image size (512 for the paper)."""
    gaussian_sigma: float = 2.5
    """Gaussian smoothing in pixels of the upsampled map (scipy, reflect mode, truncate 4)."""
    threshold: Literal["otsu", "none"] = "otsu"
    """``otsu``: keep h * (h > two-class multi-Otsu threshold); ``none``: keep the soft map."""
    back_projection: Literal["paper", "exact"] = "paper"
    """``paper``: nearest resize to the short side + symmetric NaN pad; ``exact``: inverse of the crop."""

    def __post_init__(self) -> None:
        if self.inference_steps < 1:
            raise ConfigError(f"inference_steps must be >= 1, got {self.inference_steps}")
        if self.timestep_spacing not in ("trailing", "leading"):
            raise ConfigError(f"timestep_spacing must be 'trailing' or 'leading', got {self.timestep_spacing!r}")
        if not self.cross_attention_layers:
            raise ConfigError("cross_attention_layers is empty: name at least one attn2 module path")
        if self.guidance_scale != 0.0:
            raise ConfigError(
                f"guidance_scale={self.guidance_scale}: only 0 (unconditional trajectory, shared by all phrases)"
                " is implemented"
            )
        if self.token_rule != "between_special":
            raise ConfigError(f"token_rule must be 'between_special', got {self.token_rule!r}")
        if self.threshold not in ("otsu", "none"):
            raise ConfigError(f"threshold must be 'otsu' or 'none', got {self.threshold!r}")
        if self.back_projection not in ("paper", "exact"):
            raise ConfigError(f"back_projection must be 'paper' or 'exact', got {self.back_projection!r}")
        if self.gaussian_sigma < 0:
            raise ConfigError(f"gaussian_sigma must be >= 0, got {self.gaussian_sigma}")
        start, stop = self.window
        if not 0 <= start < stop:
            raise ConfigError(f"inversion window [{start}, {stop}) is empty or negative")

    @property
    def window(self) -> tuple[int, int]:
        """Recorded grid positions as [start, stop); the official heuristic is N//2 -+ N//10."""
        n = self.inference_steps
        start = n // 2 - n // 10 if self.window_start is None else self.window_start
        stop = n // 2 + n // 10 if self.window_stop is None else self.window_stop
        return start, stop

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GroundingConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown grounding settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(values)
        if "cross_attention_layers" in values:
            values["cross_attention_layers"] = tuple(values["cross_attention_layers"])
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> GroundingConfig:
        return replace(self, **overrides) if overrides else self


PRESETS: dict[str, GroundingConfig] = {
    "paper": GroundingConfig(),
    "paper-exact-geometry": GroundingConfig(back_projection="exact"),
}


def preset(name: str) -> GroundingConfig:
    """A named preset; ``paper`` is the official code's recipe."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None
