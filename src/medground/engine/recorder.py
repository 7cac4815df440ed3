"""Running sums of phrase-token cross-attention maps over conditional passes, for any backbone.

The backbone's ``capture`` hands this recorder each chosen layer's probabilities during a pass. Per layer the
phrase tokens' maps are averaged (heads uniformly, tokens by ``token_weights``), min-max normalised per map as
the official code does, and added to a running sum: nothing per step is kept. Once the last chosen layer has
fired, the pass is cut short, since later layers cannot change what was recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from medground.backbones.base import Backbone
from medground.errors import ConfigError


class _ConditionalPassDone(Exception):
    """Raised from the last recorded layer to skip the rest of the UNet."""


class CrossAttentionRecorder:
    """Context manager that sums phrase-token attention maps of ``layers`` over conditional passes.

    ``token_weights`` is (P, L): row p averages phrase p's kept token positions. The batch of every
    conditional pass must hold the P phrases in that order, once per window step the pass covers.
    """

    def __init__(self, backbone: Backbone, layers: Sequence[str], token_weights: torch.Tensor,
                 normalise_each_map: bool = True) -> None:
        backbone.check_layers(layers)
        self.backbone = backbone
        self.layers = tuple(layers)
        self.token_weights = token_weights
        self.normalise_each_map = normalise_each_map
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.peak_bytes = 0
        """Largest memory held for recorded attention: the running sums plus one layer's probabilities."""
        self._recording = False
        self._fired = 0
        self._capture = backbone.capture(self.layers, self._sink)

    def __enter__(self) -> CrossAttentionRecorder:
        self._capture.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._capture.__exit__(*exc_info)

    def conditional_pass(self, run_unet: Callable[[], object], steps: int = 1) -> None:
        """Run one conditional UNet pass over ``steps`` window steps and add its maps; the pass stops after the
        last recorded layer."""
        self._recording, self._fired = True, 0
        try:
            run_unet()
        except _ConditionalPassDone:
            pass
        finally:
            self._recording = False
        if self._fired != len(self.layers):
            raise RuntimeError(f"only {self._fired} of {len(self.layers)} recorded layers ran in the pass")
        self.steps += steps

    def _sink(self, path: str, probabilities: torch.Tensor) -> None:
        if not self._recording:
            return
        self._add(path, probabilities)
        self._fired += 1
        if self._fired == len(self.layers):
            raise _ConditionalPassDone

    def _add(self, path: str, probabilities: torch.Tensor) -> None:
        # probabilities: (steps * P, heads, queries, tokens) -> heads and the phrase's tokens averaged
        phrases = self.token_weights.shape[0]
        weights = self.token_weights.to(probabilities.device, torch.float32).repeat(
            probabilities.shape[0] // phrases, 1)
        maps = torch.einsum("phqt,pt->pq", probabilities.float(), weights) / probabilities.shape[1]
        side = math.isqrt(maps.shape[1])
        if side * side != maps.shape[1]:
            raise ConfigError(f"layer {path} attends over {maps.shape[1]} positions, not a square grid")
        maps = maps.reshape(-1, side, side)
        if self.normalise_each_map:
            low = maps.amin(dim=(1, 2), keepdim=True)
            span = maps.amax(dim=(1, 2), keepdim=True) - low
            maps = torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
        maps = maps.reshape(-1, phrases, side, side).sum(dim=0)  # the pass's steps, summed: (P, side, side)
        self.sums[path] = self.sums[path] + maps if path in self.sums else maps
        held = sum(t.numel() * t.element_size() for t in self.sums.values())
        self.peak_bytes = max(self.peak_bytes, held + probabilities.numel() * probabilities.element_size())
