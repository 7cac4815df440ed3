"""Engine vs the paper-faithful reference (tests/reference_paper.py), measured side by side.

    python benchmarks/engine.py --quick [--json]        # 2 CPU cores, about 3 minutes
    python benchmarks/engine.py --device cuda [--precision bf16]   # the paper's full configuration

Both run on the same random-weight model of the paper's layout and the same real radiograph. Reported:
UNet evaluations (batch elements) and wall time per (image, phrase) for 1 and 4 phrases, bytes of
recorded attention, the max |diff| of the final maps, and the ratios reference / engine. The engine runs its
inversion through the compiled UNet (``Grounder(compile=True)``; ``--no-compile`` for the eager one): the compile
is paid once per model and shape, during the warm-up, and reported apart (``compile``) with the eager engine's
times and the number of images after which it has paid for itself.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from builders import random_paper_layout  # noqa: E402
from reference_paper import reference_heatmap  # noqa: E402

from medground import Grounder, GroundingConfig, load_model  # noqa: E402
from medground.config import grid_timesteps  # noqa: E402

IMAGE = ROOT / "tests" / "data" / "nih-mini" / "images" / "00000072_000.png"
PHRASES = ["small left pleural effusion", "moderate cardiomegaly", "right lower lobe consolidation",
           "left apical pneumothorax"]


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    steps = args.steps or 300
    config = GroundingConfig(inference_steps=steps)
    width_divisor = args.width_divisor or (4 if args.quick else 1)
    with tempfile.TemporaryDirectory() as folder:
        model_dir = random_paper_layout(Path(folder) / "model", width_divisor=width_divisor,
                                        image_size=args.size or (256 if args.quick else 512),
                                        text_dim=64 if args.quick else 1024)
        reference_model = load_model(model_dir, device=args.device)
        engine_model = load_model(model_dir, device=args.device)
    image = args.image
    # warm-up of every path (kernel selection, allocator; the compile), timed apart
    reference_heatmap(reference_model, image, PHRASES[0], num_timesteps=steps)
    Grounder(engine_model, config, precision=args.precision).ground(image, PHRASES[0])
    synchronise(args.device)
    started = time.perf_counter()
    if args.compile:
        Grounder(engine_model, config, precision=args.precision, compile=True).ground(image, PHRASES[0])
    synchronise(args.device)
    first_compiled_call = time.perf_counter() - started

    reference = {"seconds": [], "maps": [], "stats": []}
    for phrase in PHRASES:
        stats: dict = {}
        synchronise(args.device)
        started = time.perf_counter()
        model_map, _ = reference_heatmap(reference_model, image, phrase, num_timesteps=steps, stats=stats)
        synchronise(args.device)
        reference["seconds"].append(time.perf_counter() - started)
        reference["maps"].append(model_map)
        reference["stats"].append(stats)

    engine = time_engine(engine_model, config, image, args, compile=args.compile)
    eager = time_engine(engine_model, config, image, args, compile=False) if args.compile else engine

    window = config.window
    engine_bytes = engine[4]["results"][0].recorded_attention_bytes
    ref_bytes = reference["stats"][0]["attention_bytes"] * 4
    pairs = [(r.model_heatmap, m) for r, m in zip(engine[4]["results"], reference["maps"])]
    diffs = [np.abs(e - r) for e, r in pairs]
    ref_1, ref_4 = reference["seconds"][0], sum(reference["seconds"])
    report = {
        "torch_threads": torch.get_num_threads(), "width_divisor": width_divisor,
        "image_size": engine_model.image_size, "device": args.device, "precision": args.precision, "quick": args.quick,
        "grid_steps": len(grid_timesteps(1000, steps, config.timestep_spacing)), "window": list(window),
        "reference": {"seconds_1": ref_1, "seconds_4": ref_4,
                      "unet_evaluations_per_phrase": reference["stats"][0]["unet_evaluations"],
                      "attention_bytes_per_phrase": reference["stats"][0]["attention_bytes"]},
        "engine": {"seconds_1": engine[1]["seconds"], "seconds_4": engine[4]["seconds"],
                   "unet_evaluations_1": engine[1]["evaluations"], "unet_evaluations_4": engine[4]["evaluations"],
                   "attention_bytes_4": engine_bytes},
        "speedup_1": ref_1 / engine[1]["seconds"],
        "speedup_4": ref_4 / engine[4]["seconds"],
        "compile": compile_report(args.compile, first_compiled_call, engine, eager),
        "max_abs_diff": float(max(d.max() for d in diffs)),
        "mean_abs_diff": float(np.mean([d.mean() for d in diffs])),
        "mask_disagreement": float(np.mean([((e > 0) != (r > 0)).mean() for e, r in pairs])),
        "tf32": args.tf32,
        "attention_bytes_ratio": engine_bytes / ref_bytes,
        "seconds_per_image_phrase": {"reference": ref_4 / 4, "engine_1": engine[1]["seconds"],
                                     "engine_4": engine[4]["seconds"] / 4},
    }
    return report


def time_engine(model, config, image, args: argparse.Namespace, compile: bool) -> dict:
    engine = {}
    for count in (1, 4):
        grounder = Grounder(model, config, precision=args.precision, compile=compile)
        synchronise(args.device)
        started = time.perf_counter()
        results = grounder.ground(image, PHRASES[:count])
        synchronise(args.device)
        engine[count] = {"seconds": time.perf_counter() - started, "results": results,
                         "evaluations": sum(grounder.unet_evaluations.values())}
    return engine


def compile_report(compiled: bool, first_call: float, engine: dict, eager: dict) -> dict | None:
    """Compile time = the first compiled call minus a warm one; paid back after ``break_even_images`` images."""
    if not compiled:
        return None
    seconds = max(first_call - engine[1]["seconds"], 0.0)
    saved = eager[1]["seconds"] - engine[1]["seconds"]
    return {"seconds": seconds, "eager_seconds_1": eager[1]["seconds"], "eager_seconds_4": eager[4]["seconds"],
            "saved_seconds_per_image": saved, "break_even_images": seconds / saved if saved > 0 else None}


def print_table(report: dict) -> None:
    ref, eng = report["reference"], report["engine"]
    print(f"device {report['device']} ({report['precision']}, {report['torch_threads']} threads), paper layout / "
          f"{report['width_divisor']}, {report['image_size']} px, grid {report['grid_steps']} steps, window "
          f"{report['window']}")
    print("| | reference | engine, 1 phrase | engine, 4 phrases (one call) |")
    print("|---|---|---|---|")
    print(f"| UNet evaluations | {ref['unet_evaluations_per_phrase']} per phrase | {eng['unet_evaluations_1']} | "
          f"{eng['unet_evaluations_4']} |")
    print(f"| wall time (s) | {ref['seconds_1']:.2f} per phrase, {ref['seconds_4']:.2f} for 4 | {eng['seconds_1']:.2f} "
          f"| {eng['seconds_4']:.2f} |")
    print(f"| recorded attention (bytes) | {ref['attention_bytes_per_phrase']:,} per phrase | | "
          f"{eng['attention_bytes_4']:,} |")
    print(f"speedup_1 {report['speedup_1']:.2f}x, speedup_4 {report['speedup_4']:.2f}x, max |diff| "
          f"{report['max_abs_diff']:.2e}, attention bytes ratio {report['attention_bytes_ratio']:.2e}")
    if report["compile"]:
        c = report["compile"]
        print(f"compiled UNet: compile {c['seconds']:.1f} s once; eager engine {c['eager_seconds_1']:.2f} s "
              f"(1 phrase), {c['eager_seconds_4']:.2f} s (4); paid back after "
              f"{c['break_even_images'] or float('inf'):.0f} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1/4-width paper layout at 256 px (random weights), for 2 CPU cores")
    parser.add_argument("--steps", type=int, default=None,
                        help="nominal grid steps (default 300: the paper's 334-step grid)")
    parser.add_argument("--width-divisor", type=int, default=None, help="divide the paper's widths by this")
    parser.add_argument("--size", type=int, default=None, help="model input side in pixels")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16", "fp16"])
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run the engine's inversion eagerly (default: through the compiled UNet)")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false",
                        help="CUDA: the reference in plain fp32 too (PyTorch lets cuDNN convolutions use TF32 by "
                        "default; the engine's fp32 precision always switches TF32 off)")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = args.tf32 and torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32 and torch.backends.cuda.matmul.allow_tf32
    report = run(args)
    if args.json:
        headline = ("speedup_1", "speedup_4", "max_abs_diff", "mean_abs_diff", "mask_disagreement",
                    "attention_bytes_ratio")
        compile_seconds = report["compile"]["seconds"] if report["compile"] else None
        print(json.dumps({k: report[k] for k in headline} | {"compile_seconds": compile_seconds}
                         | {"details": report}, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
