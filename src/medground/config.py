"""Every setting of the grounding recipe in one frozen dataclass, plus named presets.

Settings that depend on the model (which layers, which grid and window, how much smoothing in pixels) default to
``None``: the backbone's family default fills them, then the model directory's ``grounding_defaults``, then a
preset's values, then the caller's overrides (``resolve``). The resolved config is explicit (layers listed, window
positions and upsampling size numbers, coarsening applied), so recording it and running it again reproduces a run.
The ``paper`` preset reproduces the official code of Vilouras et al. (arXiv 2404.12920) including its quirks; on the
paper's model its resolved form is the paper's recipe exactly. Other recipes are other presets (see ``PRESETS``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from medground.errors import ConfigError
from medground.text_input import MAX_JSON_DEPTH, json_depth

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
"""Numerics of a grounding run; only ``fp32`` reproduces the reference to the digit (see ``Grounder``)."""
MAX_UPSAMPLE_SIZE = 4096
"""Twice the largest model input medground accepts (2048); a larger map only costs memory (P x side^2 floats)."""
MAX_STEPS = 10_000
"""More grid steps than any diffusion schedule has (SD and the paper's model train on 1000)."""
MAX_SEED = 2**32 - 1
"""Seeds are 32-bit, as every framework's generators take them."""
MAX_SELF_ATTENTION_POWER = 16
"""Each power is one more propagation per layer and step; past a few the map is the self-attention's fixed point."""
MODEL_FIELDS = ("inference_steps", "window_start", "window_stop", "cross_attention_layers", "gaussian_sigma")
"""Settings a model directory may default (``grounding_defaults``): they depend on the network, not the recipe."""


@dataclass(frozen=True)
class ModelFacts:
    """What resolving a config needs to know about the model it will run on."""

    num_train_timesteps: int
    cross_attention_layers: tuple[str, ...]
    latent_side: int
    grid_sides: Callable[[], Mapping[str, int]] | None = None
    """Each cross-attention layer's query grid side, computed only when asked (it takes a dry UNet pass)."""


@dataclass(frozen=True)
class GroundingConfig:
    """How a phrase's cross-attention is read out of a diffusion model and turned into a heatmap."""

    # --- where in the diffusion process ------------------------------------------------------------------------------
    inference_steps: int | None = None
    """Nominal DDIM steps N; with ``trailing`` spacing and ratio 1000 // 300 = 3 the paper's grid has 334 steps."""
    timestep_spacing: Literal["trailing", "leading"] = "trailing"
    timestep_offset: int = 0
    """Added to every grid timestep (diffusers' ``steps_offset``; SD's DDIM grid of 50 steps is 1, 21, ..., 981)."""
    window_start: int | None = None
    """First grid position (ascending noise) whose cross-attention is recorded; None: N//2 - N//10."""
    window_stop: int | None = None
    """One past the last recorded grid position; None: N//2 + N//10."""
    grid_coarsening: int = 1
    """k > 1 runs N // k steps and re-chooses the window to cover the same timesteps (the ``fast`` preset)."""
    noising: Literal["inversion", "forward"] = "inversion"
    """``inversion``: DDIM-invert the image (the paper). ``forward``: noise the clean latent to each recorded timestep
    with fixed noise (Generate-to-Ground), no trajectory at all."""
    noise_seed: int = 0
    """Seed of the fixed noise of ``forward`` noising and of BBM's text-only generation."""
    # --- what is read ------------------------------------------------------------------------------------------------
    cross_attention_layers: tuple[str, ...] | Literal["all"] | None = None
    """Module paths of the recorded cross-attention layers (paths, not indices: orders differ by library), or
    ``all``."""
    layer_weights: tuple[float, ...] | Literal["by_resolution"] | None = None
    """Weight of each recorded layer in the mean (None: equal), in the order of ``cross_attention_layers``;
    ``by_resolution``: proportional to the layer's grid side (16x16 layers count twice as much as 8x8 ones)."""
    step_weights: tuple[float, ...] | None = None
    """Weight of each recorded grid position in the mean (None: equal), ascending noise."""
    token_rule: Literal["between_special", "content_words", "last"] = "between_special"
    """Which phrase tokens are averaged: all between the start and end tokens (the paper), the tokens of words that
    are not stop words, or the last token before the end token."""
    self_attention_power: int = 0
    """k > 0 propagates each step's cross-attention map through the same block's self-attention: map <- A^k map."""
    unconditional_prompt: str = ""
    guidance_scale: float = 0.0
    """The inverted trajectory follows the unconditional prediction only (0). Other values are used by BBM's
    text-only generation alone (Generate-to-Ground: 16)."""
    # --- how the map is made -----------------------------------------------------------------------------------------
    normalise_each_map: bool = True
    """Min-max normalise every (layer, step) map before averaging, as the official code does."""
    upsample_size: int | Literal["latent"] | None = None
    """Side of the square map the attention is resized to; None: the model's image size (512 for the paper);
    ``latent``: the latent's side (Generate-to-Ground's 64)."""
    upsample_mode: Literal["bilinear", "nearest"] = "bilinear"
    gaussian_sigma: float | None = None
    """Gaussian smoothing in pixels of the upsampled map (scipy, reflect mode, truncate 4); the paper's is 2.5."""
    bbm: bool = False
    """Generate-to-Ground's Bimodal Bias Merging of an image bias and a text bias into the map (readout.bbm)."""
    threshold: Literal["otsu", "gmm", "none"] = "otsu"
    """``otsu``: keep h * (h > two-class multi-Otsu threshold); ``gmm``: Generate-to-Ground's two-component Gaussian
    mixture threshold and orphan-pixel filter; ``none``: keep the soft map."""
    back_projection: Literal["paper", "exact"] = "paper"
    """``paper``: nearest resize to the short side + symmetric NaN pad; ``exact``: inverse of the crop."""

    def __post_init__(self) -> None:
        _check_int(self, "inference_steps", minimum=1, optional=True, maximum=MAX_STEPS)
        _check_choice(self, "timestep_spacing", ("trailing", "leading"))
        _check_int(self, "timestep_offset", minimum=0, maximum=MAX_STEPS)
        _check_int(self, "window_start", minimum=0, optional=True, maximum=MAX_STEPS)
        _check_int(self, "window_stop", minimum=1, optional=True, maximum=MAX_STEPS)
        _check_int(self, "grid_coarsening", minimum=1, maximum=MAX_STEPS)
        _check_choice(self, "noising", ("inversion", "forward"))
        _check_int(self, "noise_seed", minimum=0, maximum=MAX_SEED)
        layers = self.cross_attention_layers
        if layers is not None and layers != "all":
            if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers or \
                    not all(isinstance(p, str) and p for p in layers):
                raise ConfigError(f"cross_attention_layers must be 'all' or a non-empty list of module paths, got "
                                  f"{layers!r}")
            repeated = sorted({p for p in layers if list(layers).count(p) > 1})
            if repeated:
                raise ConfigError(f"cross_attention_layers lists {repeated} more than once")
            object.__setattr__(self, "cross_attention_layers", tuple(layers))
        for name in ("layer_weights", "step_weights"):
            _check_weights(self, name)
        _check_choice(self, "token_rule", ("between_special", "content_words", "last"))
        _check_int(self, "self_attention_power", minimum=0, maximum=MAX_SELF_ATTENTION_POWER)
        if not isinstance(self.unconditional_prompt, str):
            raise ConfigError(f"unconditional_prompt must be a string, got {self.unconditional_prompt!r}")
        _check_number(self, "guidance_scale", minimum=0.0)
        if self.guidance_scale != 0.0 and not self.bbm:
            raise ConfigError(f"guidance_scale={self.guidance_scale}: the inverted trajectory is unconditional (0, "
                              "shared by all phrases); only BBM's text-only generation (bbm=true) uses guidance")
        _check_bool(self, "normalise_each_map")
        if self.upsample_size != "latent":
            _check_int(self, "upsample_size", minimum=2, maximum=MAX_UPSAMPLE_SIZE, optional=True)
        _check_choice(self, "upsample_mode", ("bilinear", "nearest"))
        _check_number(self, "gaussian_sigma", minimum=0.0, optional=True)
        _check_bool(self, "bbm")
        if self.bbm and self.noising != "forward":
            raise ConfigError("bbm needs noising='forward': Bimodal Bias Merging is defined on forward-noised passes")
        _check_choice(self, "threshold", ("otsu", "gmm", "none"))
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
        """The settings as JSON values (tuples as lists): what run records store and output names hash."""
        values = asdict(self)
        for name in ("cross_attention_layers", "layer_weights", "step_weights"):
            if isinstance(values[name], tuple):
                values[name] = list(values[name])
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "grounding settings") -> GroundingConfig:
        """A config from a JSON object of settings; a misspelt name is a ConfigError naming ``where``, not ignored."""
        if not isinstance(values, dict):
            raise ConfigError(f"{where} must be a JSON object of settings, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"{where}: unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> GroundingConfig:
        """This config with ``overrides`` replaced and every setting checked again; unknown names: ConfigError."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown settings {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **overrides) if overrides else self


def _check_int(config: GroundingConfig, name: str, minimum: int, optional: bool = False,
               maximum: int | None = None) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or \
            (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(f"{name} must be an integer {bounds}, got {value!r}")


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


def _check_weights(config: GroundingConfig, name: str) -> None:
    values = getattr(config, name)
    if values is None or (name == "layer_weights" and values == "by_resolution"):
        return
    ok = isinstance(values, (list, tuple)) and values and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values)
    if not ok or not sum(values) > 0:
        also = " or 'by_resolution'" if name == "layer_weights" else ""
        raise ConfigError(f"{name} must be a non-empty list of finite numbers >= 0 with a positive sum{also}, got "
                          f"{values!r}")
    object.__setattr__(config, name, tuple(float(v) for v in values))


PRESETS: dict[str, GroundingConfig] = {
    "paper": GroundingConfig(),
    "paper-exact-geometry": GroundingConfig(back_projection="exact"),
    "fast": GroundingConfig(grid_coarsening=5),
    "recommended": GroundingConfig(layer_weights="by_resolution", normalise_each_map=False),
    "g2g": GroundingConfig(noising="forward", inference_steps=50, timestep_spacing="leading", timestep_offset=1,
                           window_start=0, window_stop=40, cross_attention_layers="all", token_rule="content_words",
                           guidance_scale=16.0, normalise_each_map=False, upsample_size="latent",
                           upsample_mode="nearest", gaussian_sigma=0.0, bbm=True, threshold="gmm", noise_seed=4200),
}
"""``paper``: the official code's recipe. ``paper-exact-geometry``: the same with the exact inverse of the crop.
``fast``: a 5x coarser grid whose window covers the same noise levels. ``recommended``: the paper's recipe with finer
layers weighted more (by grid side) and without the per-map min-max normalisation, so steps and layers whose
attention is weak weigh less: the combination ranked first for both toys on validation seeds by ``medground sweep``
(docs/ablation.md has the held-out numbers).
``g2g``: Generate-to-Ground's read-out (docs/readout.md says where it follows their code and where it cannot)."""


def preset(name: str) -> GroundingConfig:
    """The preset ``name`` (``PRESETS``); an unknown name is a ConfigError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None


def grid_timesteps(num_train_timesteps: int, inference_steps: int, spacing: str, offset: int = 0) -> list[int]:
    """Timesteps of the grid in ascending noise (x0 -> xT).

    ``trailing`` with integer ratio d = T // N gives {T-1, T-1-d, ...} reversed; for T=1000, N=300 that is
    {0, 3, ..., 999}: 334 steps, the grid the official code actually ran. ``leading`` gives {0, d, ..., (N-1) d}.
    A window's grid positions index the returned list.

    Args:
        num_train_timesteps: T, the length of the model's training schedule.
        inference_steps: N, the nominal number of DDIM steps, in [1, T].
        spacing: ``trailing`` or ``leading``.
        offset: added to every timestep (diffusers' ``steps_offset``).

    Raises:
        ConfigError: N outside [1, T], another spacing, or an offset that puts the grid past timestep T - 1.
    """
    if not 1 <= inference_steps <= num_train_timesteps:
        raise ConfigError(f"inference_steps must be in [1, {num_train_timesteps}], got {inference_steps}")
    ratio = num_train_timesteps // inference_steps
    if spacing == "trailing":
        grid = list(range(num_train_timesteps - 1, -1, -ratio))[::-1]
    elif spacing == "leading":
        grid = [i * ratio for i in range(inference_steps)]
    else:
        raise ConfigError(f"timestep spacing must be 'trailing' or 'leading', got {spacing!r}")
    grid = [t + offset for t in grid]
    if grid[-1] >= num_train_timesteps:
        raise ConfigError(f"timestep_offset {offset} puts the grid past the last timestep {num_train_timesteps - 1}")
    return grid


def resolve(defaults: dict[str, Any], config: GroundingConfig | str | None, overrides: dict[str, Any] | None,
            facts: ModelFacts) -> GroundingConfig:
    """``defaults`` (the backbone's, model directory included) < the preset's or config's set values < overrides,
    then made explicit for the model: layers listed, window positions and upsampling size as numbers, the grid
    coarsened, and every setting checked against the model (layers, grid, window, weights).

    Args:
        defaults: the model's ``grounding_defaults()``; only ``MODEL_FIELDS`` may be set.
        config: a preset name, a GroundingConfig (only its settings that are not None count) or None (``paper``).
        overrides: settings that win over both; None: none.
        facts: what the model offers (timesteps, cross-attention layers, latent side, grid sides).

    Raises:
        ConfigError: an unknown preset or setting, a model setting nothing gives a value, a layer the model lacks,
            or a window or weights that do not fit the grid.
    """
    chosen = preset(config or "paper") if not isinstance(config, GroundingConfig) else config
    bad = set(defaults) - set(MODEL_FIELDS)
    if bad:
        raise ConfigError(f"grounding_defaults may only set {list(MODEL_FIELDS)}; found {sorted(bad)}")
    set_values = {f.name: getattr(chosen, f.name) for f in fields(chosen) if getattr(chosen, f.name) is not None}
    merged = GroundingConfig.from_dict({**defaults, **set_values}, "model grounding_defaults")
    config = merged.with_overrides(**(overrides or {}))
    missing = [name for name in MODEL_FIELDS if getattr(config, name) is None and not name.startswith("window")]
    if missing:
        raise ConfigError(f"settings {missing} have no value from the model, the preset or the overrides")
    layers = facts.cross_attention_layers if config.cross_attention_layers == "all" else \
        config.cross_attention_layers
    unknown = [path for path in layers if path not in facts.cross_attention_layers]
    if unknown:
        raise ConfigError(f"attention layers {unknown} are not cross-attention layers of this model; its layers are "
                          f"{list(facts.cross_attention_layers)}")
    grid = grid_timesteps(facts.num_train_timesteps, config.inference_steps, config.timestep_spacing,
                          config.timestep_offset)
    start, stop = config.window
    if stop > len(grid):
        raise ConfigError(f"window [{start}, {stop}) runs past the {len(grid)}-step grid of "
                          f"inference_steps={config.inference_steps}")
    steps = config.inference_steps
    if config.grid_coarsening > 1:
        steps, (start, stop) = _coarsened(grid[start], grid[stop - 1], config, facts.num_train_timesteps)
    size = facts.latent_side if config.upsample_size == "latent" else config.upsample_size
    layer_weights = config.layer_weights
    if layer_weights == "by_resolution":
        if facts.grid_sides is None:
            raise ConfigError("layer_weights='by_resolution' needs the model's attention grid sides")
        sides = facts.grid_sides()
        coarsest = min(sides[path] for path in layers)
        layer_weights = tuple(sides[path] / coarsest for path in layers)
    resolved = config.with_overrides(inference_steps=steps, window_start=start, window_stop=stop,
                                     grid_coarsening=1, cross_attention_layers=tuple(layers), upsample_size=size,
                                     layer_weights=layer_weights)
    for name, count, what in (("layer_weights", len(layers), "recorded layers"),
                              ("step_weights", stop - start, "window positions")):
        weights = getattr(resolved, name)
        if weights is not None and len(weights) != count:
            raise ConfigError(f"{name} has {len(weights)} values but there are {count} {what}")
    return resolved


def _coarsened(low: int, high: int, config: GroundingConfig, num_train_timesteps: int) -> tuple[int, tuple[int, int]]:
    """The coarser grid and the positions on it whose timesteps lie in the fine window's [low, high]."""
    steps = max(1, config.inference_steps // config.grid_coarsening)
    grid = grid_timesteps(num_train_timesteps, steps, config.timestep_spacing, config.timestep_offset)
    inside = [i for i, t in enumerate(grid) if low <= t <= high]
    if not inside:  # the window is narrower than one coarse step: keep the nearest position
        inside = [min(range(len(grid)), key=lambda i: abs(grid[i] - (low + high) / 2))]
    return steps, (inside[0], inside[-1] + 1)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as JSON when it parses (numbers, true, lists), else as
    a string. ``a,b`` gives a list for the list-valued settings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key = key.strip()
    if json_depth(raw) > MAX_JSON_DEPTH:  # before json.loads, whose recursion the nesting would exhaust
        raise ConfigError(f"--set {key}: the value is nested deeper than the limit of {MAX_JSON_DEPTH} levels")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        lists = ("cross_attention_layers", "layer_weights", "step_weights")
        value = raw.split(",") if key in lists and raw not in ("all", "by_resolution") else raw
        if key in lists[1:] and isinstance(value, list):
            try:
                value = [float(v) for v in value]
            except ValueError:
                raise ConfigError(f"--set {key}: expected numbers separated by commas, got {raw!r}") from None
    return key, value


MAX_CONFIG_BYTES = 1_000_000
"""A settings file is a few hundred bytes; a larger one is not a settings file."""


def read_config_file(path: Path) -> dict[str, Any]:
    """Settings from a JSON file (an object of GroundingConfig fields, e.g. a run's recorded ``config``)."""
    from medground.text_input import loads_json, read_text

    values = loads_json(read_text(path, "settings", ConfigError, MAX_CONFIG_BYTES), f"cannot read settings from "
                        f"{path}: it", ConfigError)
    GroundingConfig.from_dict(values, str(path))  # the same validation as a preset's
    return values


def overrides_from(config_file: Path | None, assignments: Sequence[str] = ()) -> dict[str, Any]:
    """The settings a user gives on top of a preset: ``config_file``'s, then each ``key=value`` assignment, checked
    as a preset's would be."""
    values: dict[str, Any] = dict(read_config_file(config_file)) if config_file is not None else {}
    for text in assignments:
        key, value = parse_assignment(text)
        values[key] = value
    GroundingConfig.from_dict(values, "--set/--config")
    return values
