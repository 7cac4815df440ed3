"""``medground batch``: every (image, phrase) of a manifest into Parquet, streaming and resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from medground.batch.manifest import IMAGES_PER_UNIT
from medground.batch.store import MAP_DTYPES, PART_ROWS, PART_SECONDS
from medground.cli.common import Parents, at_least_0, at_least_1, cluster_of, command, overrides_of, quiet_transformers


def add(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """Register ``batch`` on ``commands``, with the shared flags of ``parents``."""
    batch = command(commands, "batch", run_batch_command, parents=(parents["model"], parents["engine"]))
    batch.add_argument("manifest", type=Path, metavar="MANIFEST", help="manifest file (.csv, .jsonl or .parquet)")
    batch.add_argument("--out", type=Path, required=True, help="output folder")
    batch.add_argument("--root", type=Path, default=None,
                       help="folder relative image paths start from (default: the manifest's folder)")
    batch.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    batch.add_argument("--batch-size", type=at_least_1, default=None,
                       help="images per inversion batch (default: from free GPU memory; 8 on the CPU)")
    batch.add_argument("--unit-images", type=at_least_1, default=IMAGES_PER_UNIT,
                       help=f"images per work unit, the grain of the plan and of resume (default {IMAGES_PER_UNIT}); "
                       f"finished units are written out every {PART_ROWS} rows or {PART_SECONDS:.0f} s, so a kill "
                       "loses at most that much")
    batch.add_argument("--compile", action="store_true",
                       help="run the inversion through a compiled UNet (torch.compile; CUDA graphs on CUDA); the first "
                       "batch of each shape pays the compile time")
    batch.add_argument("--map-side", type=at_least_1, default=64,
                       help="side of the stored map, a divisor of the model's input side (default 64)")
    batch.add_argument("--map-dtype", default=MAP_DTYPES[0], choices=list(MAP_DTYPES),
                       help=f"stored map values (default {MAP_DTYPES[0]}: 8 KB per row at side 64)")
    batch.add_argument("--loader-workers", type=at_least_0, default=None,
                       help="local engine: processes decoding images ahead (default: 1 on the CPU, up to 4 on CUDA)")


def run_batch_command(args: argparse.Namespace) -> int:
    """Ground every (image, phrase) of a manifest into Parquet (streaming, resumable).

    Ground every row of MANIFEST (CSV, JSONL or Parquet; columns image, phrase or phrases, optional id) into
    OUT/parts/*.parquet: one row per (manifest row, phrase) with id, image, phrase, boxes and scores, mask area,
    timings and the map (the model's centre crop, --map-side squared, --map-dtype). Phrases of one image share
    one inversion. Memory stays bounded whatever the manifest's size; after a kill, --resume continues without
    losing or repeating a row. Read the result with pandas.read_parquet('OUT/parts').
    """
    from medground.batch.manifest import Manifest
    from medground.batch.runner import run_batch, summary_line
    from medground.batch.work import BatchJob
    from medground.outputs import check_writable_folder

    manifest = Manifest.open(args.manifest, args.root)
    check_writable_folder(args.out)
    cluster = cluster_of(args)
    quiet_transformers()
    job = BatchJob(model=args.model, device=args.device, precision=args.precision, text_encoder=args.text_encoder,
                   batch_size=args.batch_size, compile=args.compile, map_side=args.map_side, map_dtype=args.map_dtype)
    summary = run_batch(manifest, args.out, job, preset=args.preset, overrides=overrides_of(args),
                        resume=args.resume, images_per_unit=args.unit_images, cluster=cluster,
                        loader_workers=args.loader_workers)
    print(summary_line(summary, args.out))
    return 0
