"""Every setting of the grounding recipe in one frozen dataclass, plus named presets.

Settings that depend on the model (which layers, which grid and window, how much smoothing in pixels) default to
``None``: the backbone's family default fills them, then the model directory's ``grounding_defaults``, then a
preset's values, then the caller's overrides (``resolve``). The ``paper`` preset reproduces the official code of
Vilouras et al. (arXiv 2404.12920) including its quirks; on the paper's model its resolved form is the paper's
recipe exactly. Cleaner choices belong in other presets, never silently in ``paper``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from medground.errors import ConfigError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
"""Numerics of a grounding run; only ``fp32`` reproduces the reference to the digit (see ``Grounder``)."""
MODEL_FIELDS = ("inference_steps", "window_start", "window_stop", "cross_attention_layers", "gaussian_sigma")
"""Settings a model directory may default (``grounding_defaults``): they depend on the network, not the recipe."""


@dataclass(frozen=True)
class GroundingConfig:
    """How a phrase's cross-attention is read out of a DDIM inversion and turned into a heatmap."""

    inference_steps: int | None = None
    """Nominal DDIM steps N; with ``trailing`` spacing and ratio 1000 // 300 = 3 the paper's grid has 334 steps."""
    timestep_spacing: Literal["trailing", "leading"] = "trailing"
    window_start: int | None = None
    """First grid position whose cross-attention is recorded; None: N//2 - N//10."""
    window_stop: int | None = None
    """One past the last recorded grid position; None: N//2 + N//10."""
    cross_attention_layers: tuple[str, ...] | None = None
    """Module paths of the recorded cross-attention layers (paths, not indices: orders differ by library)."""
    token_rule: Literal["between_special"] = "between_special"
    """Which token positions of the phrase are averaged: all between the start and end tokens."""
    unconditional_prompt: str = ""
    guidance_scale: float = 0.0
    """0: the inverted trajectory follows the unconditional prediction only (the paper's setting)."""
    normalise_each_map: bool = True
    """Min-max normalise every (layer, step) map before averaging, as the official code does."""
    upsample_size: int | None = None
    """Side of the square map the attention is resized to; None: the model's image size (512 for the paper)."""
    gaussian_sigma: float | None = None
    """Gaussian smoothing in pixels of the upsampled map (scipy, reflect mode, truncate 4); the paper's is 2.5."""
    threshold: Literal["otsu", "none"] = "otsu"
    """``otsu``: keep h * (h > two-class multi-Otsu threshold); ``none``: keep the soft map."""
    back_projection: Literal["paper", "exact"] = "paper"
    """``paper``: nearest resize to the short side + symmetric NaN pad; ``exact``: inverse of the crop."""

    def __post_init__(self) -> None:
        _check_int(self, "inference_steps", minimum=1, optional=True)
        _check_choice(self, "timestep_spacing", ("trailing", "leading"))
        _check_int(self, "window_start", minimum=0, optional=True)
        _check_int(self, "window_stop", minimum=1, optional=True)
        layers = self.cross_attention_layers
        if layers is not None:
            if isinstance(layers, str) or not all(isinstance(p, str) and p for p in layers) or not layers:
                raise ConfigError(f"cross_attention_layers must be a non-empty list of module paths, got {layers!r}")
            object.__setattr__(self, "cross_attention_layers", tuple(layers))
        _check_choice(self, "token_rule", ("between_special",))
        if not isinstance(self.unconditional_prompt, str):
            raise ConfigError(f"unconditional_prompt must be a string, got {self.unconditional_prompt!r}")
        _check_number(self, "guidance_scale", minimum=0.0)
        if self.guidance_scale != 0.0:
            raise ConfigError(f"guidance_scale={self.guidance_scale}: only 0 (unconditional trajectory, shared by all "
                              "phrases) is implemented")
        _check_bool(self, "normalise_each_map")
        _check_int(self, "upsample_size", minimum=2, optional=True)
        _check_number(self, "gaussian_sigma", minimum=0.0, optional=True)
        _check_choice(self, "threshold", ("otsu", "none"))
        _check_choice(self, "back_projection", ("paper", "exact"))
        if self.inference_steps is not None or None not in (self.window_start, self.window_stop):
            start, stop = self.window if self.inference_steps is not None else (self.window_start, self.window_stop)
            if not start < stop:
                raise ConfigError(f"inversion window [{start}, {stop}) is empty")

    @property
    def window(self) -> tuple[int, int]:
        """Recorded grid positions as [start, stop); the official heuristic is N//2 -+ N//10."""
        if self.inference_steps is None:
            raise ConfigError("the window needs inference_steps; resolve the config against a model first")
        n = self.inference_steps
        start = n // 2 - n // 10 if self.window_start is None else self.window_start
        stop = n // 2 + n // 10 if self.window_stop is None else self.window_stop
        return start, stop

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if values["cross_attention_layers"] is not None:
            values["cross_attention_layers"] = list(values["cross_attention_layers"])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "grounding settings") -> GroundingConfig:
        if not isinstance(values, dict):
            raise ConfigError(f"{where} must be a JSON object of settings, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"{where}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> GroundingConfig:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **overrides) if overrides else self

    def is_resolved(self) -> bool:
        return all(getattr(self, name) is not None for name in MODEL_FIELDS if not name.startswith("window_"))


def _check_int(config: GroundingConfig, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(config: GroundingConfig, name: str, minimum: float, optional: bool = False) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {value!r}")


def _check_bool(config: GroundingConfig, name: str) -> None:
    if not isinstance(getattr(config, name), bool):
        raise ConfigError(f"{name} must be true or false, got {getattr(config, name)!r}")


def _check_choice(config: GroundingConfig, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {getattr(config, name)!r}")


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


def resolve(defaults: dict[str, Any], config: GroundingConfig | str | None = None,
            overrides: dict[str, Any] | None = None) -> GroundingConfig:
    """``defaults`` (the backbone's, model directory included) < the preset's or config's set values < overrides."""
    chosen = preset(config or "paper") if not isinstance(config, GroundingConfig) else config
    bad = set(defaults) - set(MODEL_FIELDS)
    if bad:
        raise ConfigError(f"grounding_defaults may only set {list(MODEL_FIELDS)}; found {sorted(bad)}")
    set_values = {f.name: getattr(chosen, f.name) for f in fields(chosen) if getattr(chosen, f.name) is not None}
    merged = GroundingConfig.from_dict({**defaults, **set_values}, "model grounding_defaults")
    resolved = merged.with_overrides(**(overrides or {}))
    if not resolved.is_resolved():
        missing = [name for name in MODEL_FIELDS if getattr(resolved, name) is None and not name.startswith("window")]
        raise ConfigError(f"settings {missing} have no value from the model, the preset or the overrides")
    start, stop = resolved.window
    return resolved.with_overrides(window_start=start, window_stop=stop)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as JSON when it parses (numbers, true, lists), else as
    a string. ``a,b`` for a list of layers is accepted too."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key = key.strip()
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.split(",") if key == "cross_attention_layers" else raw
    return key, value


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a JSON file (an object of GroundingConfig fields, e.g. a run's recorded ``config``)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read settings from {path}: {exc}") from exc
    GroundingConfig.from_dict(values, str(path))  # the same validation as a preset's
    return values
