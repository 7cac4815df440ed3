"""Capture: phrase-token cross-attention maps of chosen layers, collected over passes, for any backbone.

The backbone's ``capture`` hands this recorder each chosen layer's probabilities during a pass. The recorder reduces
them to one raw map per phrase (heads averaged uniformly, tokens by ``token_weights``) and keeps what the read-out
will need: each step's raw maps when asked (``keep_steps`` for BBM's text bias, ``bias_token`` for its image bias),
else only a running sum per layer, which is exact because the read-out's per-step work (self-attention refinement,
per-map normalisation, step weights: ``medground.readout``) is applied as each step arrives, before the sum. With
``cut_off`` the pass stops once the last chosen layer has fired, since later layers cannot change what was recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from medground.backbones.base import Backbone
from medground.errors import ConfigError, ModelOutputError
from medground.readout.aggregate import step_weighted_sum
from medground.readout.maps import min_max
from medground.readout.refine import propagate


class _PassDone(Exception):
    """Raised from the last recorded layer to skip the rest of the UNet."""


class AttentionRecorder:
    """Context manager that accumulates phrase-token attention maps of ``layers`` over passes.

    The rows of every pass given by ``rows`` (``record_pass``) hold the P phrases in order, once per window step the
    pass covers (each step its own weight).

    Args:
        backbone: the model; capture is installed on entering the block and removed on leaving it.
        layers: module paths of the cross-attention layers to record.
        token_weights: (P, L): row p averages phrase p's kept token positions (``text.token_weights``).
        normalise_each_map: min-max normalise every (layer, step) map before it is weighted and summed.
        self_attention_power: k > 0 propagates each map k times through its block's self-attention
            (``readout.refine``), whose layers are then captured too.
        keep_steps: also keep every step's raw maps (``steps``: BBM's text bias).
        bias_token: also keep every step's raw maps of this token position (``bias``: BBM's image bias, token 0, the
            start token); None: not kept.

    Raises:
        ConfigError: a path that is not a cross-attention layer of the model (or lacks a self-attention layer
            beside it, when refining).
    """

    def __init__(self, backbone: Backbone, layers: Sequence[str], token_weights: torch.Tensor,
                 normalise_each_map: bool = True, self_attention_power: int = 0, keep_steps: bool = False,
                 bias_token: int | None = None) -> None:
        backbone.check_layers(layers)
        self.layers = tuple(layers)
        self.token_weights = token_weights
        self.normalise_each_map = normalise_each_map
        self.power = self_attention_power
        self.self_layers = {backbone.self_attention_of(path): path for path in self.layers} if self.power else {}
        self.sums: dict[str, torch.Tensor] = {}
        """Per layer, the step-weighted sum of the (refined, normalised) maps, (P, side, side)."""
        self.steps: dict[str, list[torch.Tensor]] = {path: [] for path in self.layers} if keep_steps else {}
        """Per layer and pass, the raw token-averaged maps (``keep_steps``)."""
        self.bias: dict[str, list[torch.Tensor]] = {path: [] for path in self.layers} if bias_token is not None else {}
        """Per layer and pass, the raw maps of token ``bias_token`` (``bias_token``)."""
        self.bias_token = bias_token
        self.passes = 0
        """Window steps recorded (a pass may hold several)."""
        self.total_weight = 0.0
        self.peak_bytes = 0
        """Largest memory held for recorded attention: what is kept plus one layer's probabilities."""
        self._rows = slice(None)
        self._weights: tuple[float, ...] = (1.0,)
        self._recording = False
        self._cut_off = True
        self._fired = 0
        self._affinity: dict[str, torch.Tensor] = {}
        self._capture = backbone.capture([*self.self_layers, *self.layers], self._sink)

    def __enter__(self) -> AttentionRecorder:
        self._capture.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._capture.__exit__(*exc_info)

    def record_pass(self, run_unet: Callable[[], object], weights: Sequence[float] = (1.0,),
                    rows: slice = slice(None), cut_off: bool = True) -> object:
        """Run one pass over ``len(weights)`` window steps and record the phrases in ``rows`` of its batch, each
        step's maps weighted by its weight; returns the pass's output (None if cut).

        Args:
            run_unet: runs the pass (the UNet call with its batch, timesteps and context).
            weights: one weight per window step the pass holds, in batch order; a step of weight 0 is kept in
                ``steps`` and ``bias`` but adds nothing to the sums.
            rows: the batch rows that hold the phrases (the conditional half of a guided pass).
            cut_off: stop the pass after the last recorded layer; False when its output is needed.

        Raises:
            ModelOutputError: a recorded layer did not run in the pass.
        """
        self._rows, self._weights, self._cut_off = rows, tuple(weights), cut_off
        self._recording, self._fired = True, 0
        output = None
        try:
            output = run_unet()
        except _PassDone:
            pass
        finally:
            self._recording = False
            self._affinity.clear()
        if self._fired != len(self.layers):
            raise ModelOutputError(f"only {self._fired} of {len(self.layers)} recorded layers ran in the pass; the "
                                   "model skipped attention layers it lists")
        self.passes += len(self._weights)
        self.total_weight += sum(self._weights)
        return output

    def _sink(self, path: str, probabilities: torch.Tensor) -> None:
        if not self._recording:
            return
        probabilities = probabilities[self._rows]
        if path in self.self_layers:  # a self-attention layer fires before its block's cross-attention
            self._affinity[self.self_layers[path]] = probabilities.float().mean(dim=1)
            return
        self._add(path, probabilities)
        self._fired += 1
        if self._cut_off and self._fired == len(self.layers):
            raise _PassDone

    def _add(self, path: str, probabilities: torch.Tensor) -> None:
        # probabilities: (steps * P, heads, queries, tokens) -> heads and the phrase's tokens averaged
        steps = len(self._weights)
        weights = self.token_weights.to(probabilities.device, torch.float32).repeat(steps, 1)
        maps = torch.einsum("phqt,pt->pq", probabilities.float(), weights) / probabilities.shape[1]
        side = math.isqrt(maps.shape[1])
        if side * side != maps.shape[1]:
            raise ConfigError(f"layer {path} attends over {maps.shape[1]} positions, not a square grid")
        if self.steps:
            self.steps[path].extend(maps.reshape(steps, -1, side, side).cpu())
        if self.bias:
            token_map = probabilities[..., self.bias_token].float().mean(dim=1)
            self.bias[path].extend(token_map.reshape(steps, -1, side, side).cpu())
        if self.power:
            maps = propagate(maps, self._affinity[path], self.power)
        maps = maps.reshape(-1, side, side)
        if self.normalise_each_map:
            maps = min_max(maps)
        if any(self._weights):
            weighted = step_weighted_sum(maps, self._weights)
            self.sums[path] = self.sums[path] + weighted if path in self.sums else weighted
        held = sum(t.numel() * t.element_size() for t in self.sums.values())
        held += sum(t.numel() * t.element_size() for kept in (*self.steps.values(), *self.bias.values())
                    for t in kept)
        self.peak_bytes = max(self.peak_bytes, held + probabilities.numel() * probabilities.element_size())
