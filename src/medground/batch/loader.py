"""Background preparation of work units for the local engine: a DataLoader whose workers read the manifest's plan
themselves, decode and resize the images of their share of the pending units, and hand them over in unit order
(pinned for the GPU on CUDA), while this process grounds the previous units."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from medground.batch.manifest import Manifest
from medground.batch.work import PreparedUnit, prepare_unit


@dataclass
class PendingUnits(IterableDataset):
    """The plan's units not yet done, prepared. Worker k of n takes pending units k, k + n, ...: the DataLoader
    collects from its workers in turn, so units come out in plan order."""

    manifest: Manifest
    images_per_unit: int
    window_rows: int
    done: frozenset[int]
    image_size: int

    def __iter__(self) -> Iterator[PreparedUnit]:
        info = get_worker_info()
        workers, me = (info.num_workers, info.id) if info is not None else (1, 0)
        pending = (u for u in self.manifest.units(self.images_per_unit, self.window_rows) if u.index not in self.done)
        for position, unit in enumerate(pending):
            if position % workers == me:
                yield prepare_unit(unit, self.image_size)


def prepared_units(units: PendingUnits, workers: int, device: torch.device) -> Iterator[PreparedUnit]:
    """Workers are spawned, not forked: a forked one would inherit the output folder's lock and hold it for a few
    seconds after its parent was killed, refusing the resume.

    Args:
        units: the pending units (``PendingUnits``).
        workers: loader processes; 0 prepares each unit in this process when it is needed.
        device: the model's device; on CUDA the inputs come pinned.
    """
    loader = DataLoader(units, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2 if workers else None, multiprocessing_context="spawn" if workers else None)
    yield from loader
