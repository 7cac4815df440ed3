"""The toy world's phantoms as a dataset: one sample per finding, category = the finding's kind.

Seeds ``seed .. seed + n - 1``; phantoms without findings contribute nothing. Images are generated in memory
(64 x 64, deterministic per seed), so no files are read.
"""

from __future__ import annotations

from medground.datasets.base import DatasetLoad, SampleRows, assemble
from medground.errors import DatasetError
from medground.toy.phantoms import SIZE, generate_phantom


def read_phantoms(seed: int = 0, n: int = 40) -> DatasetLoad:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"the number of phantoms must be a positive integer, got {n!r}")
    groups = []
    for offset in range(n):
        phantom = generate_phantom(seed + offset)
        for number, finding in enumerate(phantom.findings):
            group = SampleRows(phantom.image, f"phantom-{phantom.seed}", finding.phrase, finding.kind)
            group.boxes.append(finding.box)
            group.rows.append(f"phantom {phantom.seed} finding {number}")
            groups.append(group)
    return assemble("phantoms", groups, lambda _group: (SIZE, SIZE))
