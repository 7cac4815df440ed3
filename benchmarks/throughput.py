"""Throughput: (image, phrase)/s against the inversion batch size, with 1 and with 4 phrases per image, beside the
reference's per-sample loop (tests/reference_paper.py, one (image, phrase) after another), measured in one run.

    python benchmarks/throughput.py --quick                 # CPU, 2 cores: 1/4-width paper layout, 256 px, 63-step grid
    python benchmarks/throughput.py --device cuda --compile [--precision tf32]   # the paper's size, for a GPU

Images: distinct variants (shifted, rescaled) of the shipped NIH radiographs, so no two share an inversion. Each
batch size grounds the same images (``Grounder.ground_many`` over chunks of that many images, no trajectory cache)
after a warm-up of that shape. The per-image cost c(P) = P / rate(P) fits c = a + b P from P = 1 and 4; the
MS-CXR-sized estimate is 1,050 a + 1,162 b (1,162 phrases on about 1,050 images) at the fastest batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from builders import random_paper_layout  # noqa: E402
from reference_paper import reference_heatmap  # noqa: E402

from medground import Grounder, GroundingConfig, load_model  # noqa: E402

NIH = ROOT / "tests" / "data" / "nih-mini" / "images"
PHRASES = ["small left pleural effusion", "moderate cardiomegaly", "right lower lobe consolidation",
           "left apical pneumothorax"]
MS_CXR = {"images": 1050, "phrases": 1162}


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def distinct_images(count: int, folder: Path) -> list[Path]:
    """``count`` different radiographs: the NIH files, each shifted and rescaled a little per copy."""
    sources = sorted(NIH.glob("*.png"))
    paths = []
    for number in range(count):
        pixels = np.asarray(Image.open(sources[number % len(sources)]).convert("L"), dtype=np.float32)
        copy = number // len(sources)
        pixels = np.roll(pixels, 3 * copy, axis=1) * (1 - 0.01 * copy)
        path = folder / f"image-{number:04d}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def engine_rate(model, config, images: list[Path], phrases: int, batch: int, args: argparse.Namespace) -> float:
    """(image, phrase)/s of the engine grounding ``images`` with ``phrases`` phrases each, ``batch`` at a time."""
    grounder = Grounder(model, config, precision=args.precision, batch_size=batch, cache_size=0,
                        compile=args.compile)
    grounder.ground_many([(path, PHRASES[:phrases]) for path in images[:batch]])  # warm-up of this shape
    synchronise(args.device)
    started = time.perf_counter()
    for begin in range(0, len(images), batch):
        grounder.ground_many([(path, PHRASES[:phrases]) for path in images[begin : begin + batch]])
    synchronise(args.device)
    return len(images) * phrases / (time.perf_counter() - started)


def reference_rate(model, images: list[Path], steps: int, args: argparse.Namespace) -> float:
    reference_heatmap(model, images[0], PHRASES[0], num_timesteps=steps)  # warm-up
    synchronise(args.device)
    started = time.perf_counter()
    for number, path in enumerate(images):
        reference_heatmap(model, path, PHRASES[number % len(PHRASES)], num_timesteps=steps)
    synchronise(args.device)
    return len(images) / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    steps = args.steps or (60 if args.quick else 300)
    config = GroundingConfig(inference_steps=steps)
    batches = args.batch_sizes or ([1, 2, 4] if args.quick else [1, 8, 16, 32, 64])
    count = args.images or max(batches) * (1 if args.quick else 2)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = random_paper_layout(Path(folder) / "model", width_divisor=4 if args.quick else 1,
                                        image_size=256 if args.quick else 512, text_dim=64 if args.quick else 1024)
        model = load_model(model_dir, device=args.device)
        images = distinct_images(count, Path(folder))
        reference = reference_rate(load_model(model_dir, device=args.device),
                                   images[: args.reference_samples], steps, args)
        rates = {phrases: {batch: engine_rate(model, config, images, phrases, batch, args) for batch in batches}
                 for phrases in (1, 4)}
    best = max(batches, key=lambda b: rates[1][b])
    per_image = {p: p / rates[p][best] for p in (1, 4)}
    b = (per_image[4] - per_image[1]) / 3
    a = per_image[1] - b
    return {
        "device": args.device, "precision": args.precision, "compile": args.compile, "threads": torch.get_num_threads(),
        "grid_steps": steps, "images": count, "reference_per_s": reference,
        "engine_per_s": {f"{p}_phrases": {str(k): v for k, v in r.items()} for p, r in rates.items()},
        "ratio_to_reference": {f"{p}_phrases": {str(k): v / reference for k, v in r.items()} for p, r in rates.items()},
        "per_image_cost_vs_batch_1": {f"{p}_phrases": {str(k): rates[p][1] / v for k, v in r.items()}
                                      for p, r in rates.items()},
        "best_batch": best, "seconds_per_image": a, "seconds_per_extra_phrase": b,
        "ms_cxr_sized_minutes": (MS_CXR["images"] * a + MS_CXR["phrases"] * b) / 60,
        "ms_cxr_sized_reference_minutes": MS_CXR["phrases"] / reference / 60,
    }


def print_table(report: dict) -> None:
    print(f"{report['device']} {report['precision']}{' compiled' if report['compile'] else ''}, "
          f"{report['threads']} threads, grid of nominal {report['grid_steps']} steps, {report['images']} images")
    print(f"reference per-sample loop: {report['reference_per_s']:.3f} (image, phrase)/s")
    print("| batch | 1 phrase/image: (image, phrase)/s | x reference | per-image cost vs batch 1 | "
          "4 phrases/image: (image, phrase)/s | x reference | per-image cost vs batch 1 |")
    print("|---|---|---|---|---|---|---|")
    one, four = report["engine_per_s"]["1_phrases"], report["engine_per_s"]["4_phrases"]
    for batch in one:
        cells = []
        for key, rates in (("1_phrases", one), ("4_phrases", four)):
            cells += [f"{rates[batch]:.3f}", f"{report['ratio_to_reference'][key][batch]:.2f}",
                      f"{report['per_image_cost_vs_batch_1'][key][batch]:.2f}"]
        print(f"| {batch} | " + " | ".join(cells) + " |")
    print(f"MS-CXR-sized workload (1,050 images, 1,162 phrases) at batch {report['best_batch']}: "
          f"{report['ms_cxr_sized_minutes']:.1f} min (reference loop: "
          f"{report['ms_cxr_sized_reference_minutes']:.1f} min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/4-width paper layout, 256 px, 63-step grid (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="the inversion through the compiled UNet")
    parser.add_argument("--steps", type=int, default=None, help="nominal grid steps (default: 60 quick, 300 else)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--images", type=int, default=None, help="images per measurement (default: the largest "
                        "batch, twice that without --quick)")
    parser.add_argument("--reference-samples", type=int, default=2, help="samples of the reference loop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
