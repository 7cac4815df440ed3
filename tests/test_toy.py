"""The toy world: deterministic phantoms, a trainer that learns, and the shipped model grounding better
than every position-only baseline on held-out phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medground import Grounder, load_model
from medground.datasets.phantoms import FINDING_KINDS, SIZE, VALIDATION_SEEDS, generate_phantom
from medground.loading import KNOWN_MODELS
from medground.toy.evaluate import evaluate_toy
from medground.toy.train import train

HELD_OUT_SEED = 9_100_000  # far from the training seeds (0..63999 for both shipped toys) and the validation range


def test_phantoms_are_deterministic_and_varied():
    first, again = generate_phantom(123), generate_phantom(123)
    assert np.array_equal(first.image, again.image) and first.findings == again.findings
    phantoms = [generate_phantom(seed) for seed in range(400)]
    kinds = {f.kind for p in phantoms for f in p.findings}
    assert kinds == set(FINDING_KINDS)
    two_kinds = [p for p in phantoms if len({f.kind for f in p.findings}) == 2]
    assert len(two_kinds) > 0.3 * len(phantoms)
    for phantom in phantoms:
        assert phantom.image.shape == (SIZE, SIZE) and phantom.image.min() >= 0 and phantom.image.max() <= 1
        for finding in phantom.findings:
            assert finding.phrase in phantom.caption
            x, _, w, _ = finding.box
            if finding.side == "left":  # the patient's left is the image's right
                assert x + w / 2 > SIZE / 2
            elif finding.side == "right":
                assert x + w / 2 < SIZE / 2


def test_training_reduces_the_loss(tmp_path):
    train(tmp_path, "monai-ldm", steps=40, batch_size=8, seed=1, lr=1e-3, caption_dropout=0.15, checkpoint_every=40)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])
    checkpoint = load_model(tmp_path / "checkpoints" / "step_00040")  # checkpoints are loadable model dirs
    assert checkpoint.description["training"]["steps"] == 40


def test_the_trainer_trains_the_diffusers_family_through_the_seam(tmp_path):
    train(tmp_path, "diffusers", steps=24, batch_size=8, seed=1, lr=1e-3, caption_dropout=0.15, checkpoint_every=24,
          autoencoder_steps=4, prediction_type="v_prediction")  # SD 2.x's target instead of the family's epsilon
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    # the last six losses fall 14-19% below the first six across machines (0.81 on CI): a 10% fall is learning
    assert len(losses) == 24 and np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6])
    checkpoint = load_model(tmp_path / "checkpoints" / "step_00024")
    assert checkpoint.family == "diffusers" and type(checkpoint.autoencoder).__name__ == "AutoencoderKL"
    assert checkpoint.noise_schedule.prediction_type == "v_prediction"
    assert checkpoint.description["training"]["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("name, unet_class, size_limit", [("toy", "DiffusionModelUNet", 20),
                                                          ("toy-sd", "UNet2DConditionModel", 15)])
def test_shipped_models_load_through_the_common_loader(name, unet_class, size_limit):
    model = load_model(name)
    spec = json.loads((KNOWN_MODELS[name] / "model.json").read_text())
    assert type(model.unet).__name__ == unet_class and type(model.text_encoder).__name__ == "CLIPTextModel"
    assert spec["training"]["command"].startswith("python -m medground.toy.train")
    assert spec["selection"]["validation_seeds"][0] == VALIDATION_SEEDS.start
    assert set(spec["grounding_defaults"]["cross_attention_layers"]) <= set(model.attention_layers())
    size_mb = sum(f.stat().st_size for f in KNOWN_MODELS[name].rglob("*") if f.is_file()) / 1e6
    assert size_mb <= size_limit
    assert not list(KNOWN_MODELS[name].rglob("*log*"))  # training logs stay out of the package
    grounder = Grounder(model)
    assert grounder.config.cross_attention_layers == tuple(spec["grounding_defaults"]["cross_attention_layers"])


# measured on HELD_OUT_SEED..+23 (fp32, CPU): toy ldm mIoU .280 AUROC .901 (exact .915) CNR 1.70 discrimination .82;
# toy-sd ldm .269 / .926 (.943) / 1.98 / .82 (11 pairs); best baseline (prior) .200 / .808 (.852) / 1.22 for both.
# The margins leave room for numerical noise (one of 11 pairs flipping), not for a regression.
MIOU_MARGIN, DISCRIMINATION_FLOOR = 0.04, 0.7


@pytest.mark.parametrize("name", ["toy", "toy-sd"])
def test_shipped_model_beats_every_baseline(name):
    methods = evaluate_toy(load_model(name), HELD_OUT_SEED, 24)["methods"]
    ldm = methods["ldm"]
    baselines = [methods[baseline] for baseline in ("uniform", "centre", "prior", "untrained")]
    assert ldm["miou"] >= max(b["miou"] for b in baselines) + MIOU_MARGIN
    assert ldm["auroc"] >= max(0.85, max(b["auroc"] for b in baselines) + 0.05)
    assert ldm["auroc_exact"] >= 0.87
    assert ldm["cnr"] >= max(1.4, max(b["cnr"] for b in baselines) + 0.3)
    assert ldm["discrimination"] >= DISCRIMINATION_FLOOR and ldm["pairs"] >= 4
    assert methods["untrained"]["auroc"] <= 0.6


def test_pixel_unshuffle_autoencoder_is_lossless():
    import torch

    from medground.backbones.components import PixelUnshuffleAutoencoder

    autoencoder = PixelUnshuffleAutoencoder(in_channels=1, factor=2)
    images = torch.from_numpy(generate_phantom(7).image)[None, None]
    latents = autoencoder.encode(images)
    assert latents.shape == (1, 4, SIZE // 2, SIZE // 2)
    assert torch.allclose(autoencoder.decode(latents), images, atol=1e-6)


def test_the_ablation_tables_recommended_row_is_what_toy_eval_gives():
    """docs/ablation.md promises that ``medground toy eval --preset recommended`` reproduces its row."""
    rows = json.loads((Path(__file__).resolve().parents[1] / "docs" / "ablation-results.json").read_text())
    (row,) = [r for r in rows if r["model"] == "toy" and r["seed"] == 123456789 and r["command"].endswith(
        "--preset recommended")]
    measured = evaluate_toy(load_model("toy"), 123456789, 40, methods=("ldm",), preset="recommended")
    ldm = measured["methods"]["ldm"]
    # the table ran on one thread; other thread counts sum in another order, which can move an Otsu pixel
    for metric in ("miou", "auroc", "auroc_exact", "cnr"):
        assert ldm[metric] == pytest.approx(row[metric], abs=2e-3), metric
    assert ldm["discrimination"] == pytest.approx(row["discrimination"], abs=0.051)  # one pair of 20 at most
    assert ldm["unet_evaluations_per_phrase"] == row["unet_evaluations_per_phrase"]
