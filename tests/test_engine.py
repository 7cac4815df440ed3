"""Engine pieces: the schedule against MONAI's scheduler, the recorder's restore, multi-phrase sharing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from medground import Grounder, load_model
from medground.backbones.base import NoiseSchedule
from medground.config import GroundingConfig, grid_timesteps, preset
from medground.engine.recorder import AttentionRecorder
from medground.engine.schedule import ddim_step
from medground.errors import ConfigError


def test_paper_grid_and_window():
    grid = grid_timesteps(1000, 300, "trailing")
    assert len(grid) == 334 and grid[:3] == [0, 3, 6] and grid[-1] == 999
    assert preset("paper").with_overrides(inference_steps=300).window == (120, 180)
    assert [grid[i] for i in (120, 179)] == [360, 537]
    assert grid_timesteps(1000, 300, "leading")[:2] == [0, 3]


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_inversion_step_matches_monai_reversed_step(prediction_type):
    schedule = NoiseSchedule(prediction_type=prediction_type)
    scheduler = DDIMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015,
                              beta_end=0.0205, prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(300)
    assert torch.equal(schedule.alphas_cumprod(), scheduler.alphas_cumprod)
    alphas = schedule.alphas_cumprod()
    latent, output = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    for t in (0, 360, 537):
        expected, _ = scheduler.reversed_step(output, t, latent)
        ours = ddim_step(latent, output, alphas[t], alphas[t + 3], prediction_type)
        assert torch.allclose(ours, expected, atol=1e-6, rtol=0)


def test_recorder_restores_the_model_and_rejects_unknown_layers(tiny_model_dir):
    model = load_model(tiny_model_dir)
    paths = model.attention_layers()
    assert len(paths) == 11  # the paper layout: official index 3, 4, 6, 7 are the 16x16 layers
    before = {p: (m.save_attn, m.use_flash_attention) for p, m in model.unet.named_modules() if p in paths}
    assert all(fused for _, fused in before.values())
    layers = Grounder(model, "paper").config.cross_attention_layers
    latent = torch.randn(1, 3, 16, 16)
    context = model.embed_text(["effusion"])
    with torch.no_grad(), AttentionRecorder(model, layers, torch.full((1, 77), 1 / 77)) as recorder:
        assert all(model.unet.get_submodule(p).save_attn for p in layers)
        model.predict(latent, 3, context)  # not recorded: outside a pass
        recorder.record_pass(lambda: model.predict(latent, 3, context))
    assert set(recorder.sums) == set(layers) and recorder.passes == 1
    for maps in recorder.sums.values():
        assert maps.amin() == 0 and maps.amax() == 1  # per-map min-max normalisation
    after = {p: (m.save_attn, m.use_flash_attention) for p, m in model.unet.named_modules() if p in paths}
    assert after == before
    assert all(not m._forward_hooks for m in model.unet.modules())
    with pytest.raises(ConfigError, match="are not cross-attention layers"):
        AttentionRecorder(model, ["down_blocks.9.attn2"], torch.ones(1, 77))


def test_k_phrases_together_equal_each_alone(tiny_model_dir, nih_root):
    model = load_model(tiny_model_dir)
    grounder = Grounder(model, GroundingConfig(inference_steps=60))
    image = nih_root / "images" / "00003789_000.png"
    phrases = ["left apical pneumothorax", "moderate cardiomegaly", "bibasilar atelectasis"]
    together = grounder.ground(image, phrases)
    assert [r.phrase for r in together] == phrases
    for phrase, result in zip(phrases, together):
        alone = grounder.ground(image, [phrase])[0]
        assert np.abs(alone.model_heatmap - result.model_heatmap).max() <= 1e-5
    assert not np.allclose(together[0].model_heatmap, together[1].model_heatmap)


def test_config_validation():
    with pytest.raises(ConfigError, match="guidance_scale"):
        GroundingConfig(guidance_scale=7.5)
    with pytest.raises(ConfigError, match="empty"):
        GroundingConfig(window_start=10, window_stop=10)
    with pytest.raises(ConfigError, match="unknown settings"):
        GroundingConfig.from_dict({"sigma": 2})
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("nope")


def test_trajectory_cache_and_image_batching(tiny_model_dir, odd_images):
    model = load_model(tiny_model_dir)
    config = GroundingConfig(inference_steps=60)
    grounder = Grounder(model, config, batch_size=2)
    images = [odd_images["portrait"], odd_images["landscape"]]
    batched = grounder.ground_many([(images[0], ["cardiomegaly"]), (images[1], ["pleural effusion"])])
    window_stop = config.window[1]
    assert grounder.unet_evaluations == {"unconditional": 2 * (window_stop - 1), "conditional": 2 * 12}
    again = grounder.ground(images[1], ["pleural effusion", "cardiomegaly"])  # cached: conditional passes only
    assert grounder.unet_evaluations["unconditional"] == 2 * (window_stop - 1)
    assert grounder.unet_evaluations["conditional"] == 2 * 12 + 2 * 12
    assert again[0].unet_evaluations["unconditional"] == 0
    for image, phrase, result in ((images[0], "cardiomegaly", batched[0][0]), (images[1], "pleural effusion",
                                                                               batched[1][0])):
        alone = Grounder(model, config).ground(image, [phrase])[0]
        assert np.abs(alone.model_heatmap - result.model_heatmap).max() <= 1e-5
    assert np.abs(again[0].model_heatmap - batched[1][0].model_heatmap).max() <= 1e-6


def test_reduced_precision_needs_cuda(tiny_model_dir):
    with pytest.raises(ConfigError, match="CUDA"):
        Grounder(load_model(tiny_model_dir), precision="bf16")


def test_coarser_upsampling_and_soft_maps(tiny_model_dir, odd_images):
    model = load_model(tiny_model_dir)
    config = GroundingConfig(inference_steps=60, upsample_size=64, threshold="none", back_projection="exact")
    result = Grounder(model, config).ground(odd_images["portrait"], ["pleural effusion"])[0]
    assert result.model_heatmap.shape == (128, 128)  # resized back to the model's input for the geometry
    assert (result.model_heatmap > 0).mean() > 0.9  # soft map: nothing zeroed below the Otsu threshold
    assert result.mask.dtype == bool and 0 < result.mask.mean() < 1
    assert result.heatmap.shape == (353, 301) and np.isnan(result.heatmap).any()
