"""Peak resident memory and wall time of ``medground import-diffusers`` on a full-size Stable Diffusion 2.1-base layout.

    python benchmarks/import_memory.py --workdir /tmp/import-memory                     # this checkout's import
    python benchmarks/import_memory.py --workdir /tmp/import-memory \\
        --variant original=/tmp/original/src --variant this=src                          # two versions, same pipeline
    python benchmarks/import_memory.py --workdir /tmp/import-memory --small              # 1/8 width: a smoke run

The pipeline folder holds RANDOM weights in the published configurations of SD 2.1-base (UNet, VAE, the OpenCLIP
ViT-H text tower as SD 2.1 exports it; 4.9 GB of fp32 safetensors), a small CLIP BPE tokenizer and a v-prediction
scheduler; each component is built and saved on its own, so building never holds two. Each variant imports it in a
child process (``PYTHONPATH`` = that variant's ``src``); its peak resident set comes from ``wait4`` (``ru_maxrss`` of
that child alone). Printed: each component's weight bytes, per variant the peak, the wall time, and the ratio
peak / (largest component + 1 GiB), the target being <= 1; with ``--load`` also the peak of ``load_model`` on the
imported folder (what grounding needs before its first step). Generated folders are deleted unless ``--keep``.
Not a test: run it alone on the machine (the original import peaks above 12 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30

SD21_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False, "use_linear_projection": True,
}
SD_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
OPENCLIP_H_TEXT = {  # SD 2.1's text_encoder/config.json (CLIPTextModel of OpenCLIP ViT-H/14's text tower)
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1024,
    "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 4096, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512,
    "vocab_size": 49408,
}
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}
SD21_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.10.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": False,
    "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}
CHILD = """
import sys, time
from pathlib import Path
from medground.backbones.diffusers_import import import_diffusers
start = time.perf_counter()
import_diffusers(sys.argv[1], Path(sys.argv[2]), name="sd21-base-random", data_terms="random weights (benchmark)")
print(f"CALL_SECONDS {time.perf_counter() - start:.1f}")
"""
LOAD_CHILD = """
import sys, time
from medground import load_model
start = time.perf_counter()
load_model(sys.argv[1])
print(f"CALL_SECONDS {time.perf_counter() - start:.1f}")
"""


def build_diffusers_component(folder: Path, config: dict, seed: int) -> None:
    """Random weights of one diffusers network, saved as safetensors, then freed."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    network = getattr(diffusers, config["_class_name"]).from_config(
        {k: v for k, v in config.items() if not k.startswith("_")})
    network.save_pretrained(folder, safe_serialization=True)
    del network


def build_text(out: Path, seed: int) -> None:
    """A small CLIP BPE tokenizer (SD 2.x pads with ``!``) and the full-size random text tower beside it."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, str(ROOT / "tests"))
    from builders import REPORT_CORPUS

    from medground.toy.tokenizer import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(re.findall(r"[a-z]+", REPORT_CORPUS), out / "tokenizer", num_merges=150,
                                     pad_token="!")
    torch.manual_seed(seed)
    config = CLIPTextConfig(**{k: v for k, v in OPENCLIP_H_TEXT.items() if k != "architectures"},
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    model = CLIPTextModel(config).eval()
    model.save_pretrained(out / "text_encoder")
    del model


def build_pipeline(out: Path, small: bool) -> Path:
    """The SD 2.1-base pipeline folder (or, with ``small``, the tests' 1/8-width SD-2 layout)."""
    if small:
        sys.path.insert(0, str(ROOT / "tests"))
        from builders import random_sd_pipeline

        return random_sd_pipeline(out, version=2)
    out.mkdir(parents=True)
    build_diffusers_component(out / "unet", SD21_UNET, seed=0)
    build_diffusers_component(out / "vae", SD_VAE, seed=1)
    build_text(out, seed=2)
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER, indent=2))
    (out / "model_index.json").write_text(json.dumps(SD21_INDEX, indent=2))
    return out


def component_bytes(pipeline: Path) -> dict[str, int]:
    return {part: sum(p.stat().st_size for p in (pipeline / part).glob("*.safetensors"))
            for part in ("unet", "vae", "text_encoder")}


def run_child(src: Path, code: str, *args: Path) -> dict[str, float]:
    """``code`` in a child process: its own peak resident set (``wait4``), wall time, and the measured call's time."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "TRANSFORMERS_VERBOSITY": "error",
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"child with {src} failed ({child.returncode}):\n{output[-3000:]}")
    found = re.search(r"CALL_SECONDS ([\d.]+)", output)
    return {"peak_bytes": usage.ru_maxrss * 1024, "wall_seconds": round(wall, 1),
            "call_seconds": float(found.group(1)) if found else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder (outside the repository)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=SRC",
                        help="a medground src folder to measure (repeatable); default: this checkout's src")
    parser.add_argument("--small", action="store_true", help="1/8-width layout: checks the script in seconds")
    parser.add_argument("--keep", action="store_true", help="keep the generated folders")
    parser.add_argument("--load", action="store_true", help="also measure load_model on each imported folder")
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"this": str(ROOT / "src")}
    if args.workdir.resolve().is_relative_to(ROOT):
        raise SystemExit(f"--workdir {args.workdir} is inside the repository; use a scratch folder such as /tmp")
    pipeline = args.workdir / "sd21-base-random"
    try:
        start = time.perf_counter()
        if not (pipeline / "model_index.json").is_file():
            build_pipeline(pipeline, args.small)
        print(f"pipeline {pipeline} ready in {time.perf_counter() - start:.0f} s")
        sizes = component_bytes(pipeline)
        largest = max(sizes.values())
        print("component weights: " + ", ".join(f"{k} {v / GIB:.3f} GiB ({v:,} B)" for k, v in sizes.items())
              + f"; total {sum(sizes.values()) / GIB:.3f} GiB")
        results = {}
        for label, src in variants.items():
            out = args.workdir / f"imported-{label}"
            shutil.rmtree(out, ignore_errors=True)
            measured = run_child(Path(src), CHILD, pipeline, out)
            measured["ratio"] = round(measured["peak_bytes"] / (largest + GIB), 2)
            results[label] = measured
            print(f"{label}: peak {measured['peak_bytes'] / GIB:.2f} GiB, wall {measured['wall_seconds']} s "
                  f"(import itself {measured['call_seconds']} s), peak / (largest component + 1 GiB) = "
                  f"{measured['ratio']}")
            if args.load:
                loaded = run_child(Path(src), LOAD_CHILD, out)
                measured["load_model"] = loaded
                print(f"{label}: load_model of the imported folder: peak {loaded['peak_bytes'] / GIB:.2f} GiB, "
                      f"{loaded['call_seconds']} s")
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        print(json.dumps({"components": sizes, "largest_plus_1gib": largest + GIB, "variants": results}))
    finally:
        if not args.keep:
            shutil.rmtree(pipeline, ignore_errors=True)


if __name__ == "__main__":
    main()
