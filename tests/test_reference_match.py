"""The engine's ``paper`` preset must reproduce the plain official algorithm on the same model and image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_paper import reference_heatmap

from medground import Grounder, load_model

PHRASES = ["small left pleural effusion", "right lower lobe consolidation concerning for pneumonia"]
TINY_LAYERS = (  # the official indices [3, 4, 6, 7] of the paper layout, as module paths
    "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "middle_block.attention.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.0.attentions.2.transformer_blocks.0.attn2",
)


@pytest.fixture(scope="module")
def engine_results(tiny_model_dir, odd_images):
    model = load_model(tiny_model_dir)
    grounder = Grounder(model, "paper")
    config = grounder.config  # the paper preset resolved on the paper's layout is the paper's recipe
    assert config.cross_attention_layers == TINY_LAYERS and config.window == (120, 180)
    assert (config.inference_steps, config.gaussian_sigma, config.timestep_spacing) == (300, 2.5, "trailing")
    return {name: grounder.ground(path, PHRASES) for name, path in odd_images.items()}


@pytest.mark.parametrize("image_name", ["portrait", "landscape"])
@pytest.mark.parametrize("phrase_index", [0, 1])
def test_paper_preset_matches_reference(tiny_model_dir, odd_images, engine_results, image_name, phrase_index):
    reference_model = load_model(tiny_model_dir)
    expected_model_map, expected_original = reference_heatmap(reference_model, odd_images[image_name],
                                                              PHRASES[phrase_index])
    result = engine_results[image_name][phrase_index]
    assert result.phrase == PHRASES[phrase_index]
    assert result.model_heatmap.shape == expected_model_map.shape
    assert np.abs(result.model_heatmap - expected_model_map).max() <= 1e-5
    assert (expected_model_map > 0).mean() > 0.05  # Otsu kept a real foreground, not an empty map
    assert np.array_equal(np.isnan(result.heatmap), np.isnan(expected_original))
    assert np.nanmax(np.abs(result.heatmap - expected_original)) <= 1e-5


def test_engine_does_only_the_needed_unet_work(engine_results):
    evaluations = engine_results["portrait"][0].unet_evaluations
    assert evaluations["unconditional"] == 179  # positions 0..178 reach the latent at 179
    assert evaluations["conditional"] == 60 * len(PHRASES)  # one batch of phrases per window step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_strict_fp32_on_cuda_matches_reference_and_restores_tf32_flags(tiny_model_dir, odd_images):
    """PyTorch lets cuDNN use TF32 by default; ``fp32`` must switch it off for its own call and back after."""
    torch.backends.cudnn.allow_tf32 = True
    reference_model = load_model(tiny_model_dir, device="cuda")
    torch.backends.cudnn.allow_tf32 = False
    expected_model_map, _ = reference_heatmap(reference_model, odd_images["portrait"], PHRASES[0])
    torch.backends.cudnn.allow_tf32 = True
    result = Grounder(load_model(tiny_model_dir, device="cuda"), "paper").ground(odd_images["portrait"], PHRASES[0])
    assert torch.backends.cudnn.allow_tf32
    assert np.abs(result[0].model_heatmap - expected_model_map).max() <= 1e-5
