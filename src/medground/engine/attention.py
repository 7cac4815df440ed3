"""Capture of phrase-token cross-attention in selected MONAI ``CrossAttentionBlock`` layers.

Only the selected layers compute explicit softmax probabilities (``save_attn``); every other attention
layer keeps fused SDPA. Each conditional pass adds, per layer, the phrase tokens' mean map (min-max
normalised per map, as the official code does) to a running sum: nothing per step is stored. Once the
last selected layer has run, the pass is cut short, since later layers cannot change what was recorded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medground.errors import ConfigError


def _is_attention_block(module: nn.Module) -> bool:
    return hasattr(module, "use_flash_attention") and hasattr(module, "save_attn")


def set_fused_attention(unet: nn.Module, enabled: bool) -> nn.Module:
    """Switch every MONAI attention block that can use SDPA to fused (True) or explicit (False) attention."""
    for module in unet.modules():
        if _is_attention_block(module) and getattr(module, "rel_positional_embedding", None) is None:
            module.use_flash_attention = enabled and not module.save_attn
    return unet


def cross_attention_paths(unet: nn.Module) -> list[str]:
    """Module paths of all text cross-attention layers (``attn2``), in registration order."""
    return [name for name, module in unet.named_modules() if name.endswith("attn2") and _is_attention_block(module)]


class _ConditionalPassDone(Exception):
    """Raised from the last recorded layer to skip the rest of the UNet."""


class CrossAttentionRecorder:
    """Context manager that sums phrase-token attention maps of ``layer_paths`` over conditional passes.

    ``token_weights`` is (P, L): row p averages phrase p's kept token positions. The batch of every
    conditional pass must hold the P phrases in that order.
    """

    def __init__(self, unet: nn.Module, layer_paths: Sequence[str], token_weights: torch.Tensor,
                 normalise_each_map: bool = True) -> None:
        available = cross_attention_paths(unet)
        missing = [path for path in layer_paths if path not in available]
        if missing:
            raise ConfigError(f"cross-attention layers {missing} not in this UNet; its attn2 layers are {available}")
        self.unet = unet
        self.layer_paths = tuple(layer_paths)
        self.token_weights = token_weights
        self.normalise_each_map = normalise_each_map
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.peak_bytes = 0
        """Largest memory held for recorded attention: the running sums plus one layer's probabilities."""
        self._recording = False
        self._fired = 0
        self._handles: list[Any] = []
        self._saved_flags: list[tuple[nn.Module, bool, bool]] = []

    def __enter__(self) -> CrossAttentionRecorder:
        for path in self.layer_paths:
            module = self.unet.get_submodule(path)
            self._saved_flags.append((module, module.save_attn, module.use_flash_attention))
            module.save_attn, module.use_flash_attention = True, False
            self._handles.append(module.register_forward_hook(self._make_hook(path)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        for module, save_attn, fused in self._saved_flags:
            module.save_attn, module.use_flash_attention = save_attn, fused
            module.att_mat = torch.Tensor()
        self._handles.clear()
        self._saved_flags.clear()

    def conditional_pass(self, run_unet: Callable[[], object]) -> None:
        """Run one conditional UNet pass and add its maps; the pass stops after the last recorded layer."""
        self._recording, self._fired = True, 0
        try:
            run_unet()
        except _ConditionalPassDone:
            pass
        finally:
            self._recording = False
        if self._fired != len(self.layer_paths):
            raise RuntimeError(f"only {self._fired} of {len(self.layer_paths)} recorded layers ran in the pass")
        self.steps += 1

    def _make_hook(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: object, _output: object) -> None:
            probabilities, module.att_mat = module.att_mat, torch.Tensor()
            if not self._recording:
                return
            self._add(path, probabilities)
            self._fired += 1
            if self._fired == len(self.layer_paths):
                raise _ConditionalPassDone

        return hook

    def _add(self, path: str, probabilities: torch.Tensor) -> None:
        # probabilities: (P, heads, queries, tokens) -> heads and the phrase's tokens averaged -> (P, queries)
        weights = self.token_weights.to(probabilities.device, torch.float32)
        maps = torch.einsum("phqt,pt->pq", probabilities.float(), weights) / probabilities.shape[1]
        side = math.isqrt(maps.shape[1])
        if side * side != maps.shape[1]:
            raise ConfigError(f"layer {path} attends over {maps.shape[1]} positions, not a square grid")
        maps = maps.reshape(-1, side, side)
        if self.normalise_each_map:
            low = maps.amin(dim=(1, 2), keepdim=True)
            span = maps.amax(dim=(1, 2), keepdim=True) - low
            maps = torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)
        self.sums[path] = self.sums[path] + maps if path in self.sums else maps
        held = sum(t.numel() * t.element_size() for t in self.sums.values())
        self.peak_bytes = max(self.peak_bytes, held + probabilities.numel() * probabilities.element_size())
