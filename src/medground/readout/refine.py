"""Self-attention refinement: a cross-attention map propagated through the same block's self-attention.

With A the block's self-attention (row-stochastic over keys, heads averaged), ``power`` k gives map <- A^k map: each
position takes the attention-weighted mean of the map over the positions it attends to (DAAM-style refinement).
"""

from __future__ import annotations

import torch


def propagate(maps: torch.Tensor, affinity: torch.Tensor, power: int) -> torch.Tensor:
    """(P, Q) maps and (P, Q, Q) affinities -> (P, Q) maps after ``power`` propagations.

    Args:
        maps: (P, Q) cross-attention maps over the Q query positions of one layer.
        affinity: (P, Q, Q) self-attention of the same block, heads averaged (each row sums to 1).
        power: k, the number of propagations; 0 returns ``maps`` as they are.
    """
    for _ in range(power):  # (A^k m)_i = sum_j A_ij (A^(k-1) m)_j
        maps = torch.einsum("pij,pj->pi", affinity, maps)
    return maps
