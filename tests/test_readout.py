"""Read-out options against plain transcriptions of their definitions, and the presets built from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import random_sd_pipeline
from skimage.metrics import structural_similarity
from sklearn.mixture import GaussianMixture

from medground import Grounder, load_model
from medground.config import GroundingConfig, ModelFacts, grid_timesteps, parse_assignment, preset, resolve
from medground.datasets.phantoms import generate_phantom
from medground.engine.invert import position_noise
from medground.errors import ConfigError
from medground.readout.bbm import merge_biases
from medground.readout.threshold import smooth_and_threshold
from medground.text import phrase_tokens

PAPER_FACTS = ModelFacts(1000, ("a.attn2", "b.attn2"), 64)


def test_gmm_threshold_is_g2g_mixture_then_orphan_filter():
    rng = np.random.default_rng(0)
    heatmap = np.clip(rng.normal(0.3, 0.1, (40, 40)), 0, None).astype(np.float32)
    heatmap[10:22, 8:20] += 0.5
    heatmap[30, 30] += 0.9  # an orphan: above the threshold alone
    final, mask = smooth_and_threshold(heatmap, 0.0, "gmm")
    # transcription: min-max, GaussianMixture(2) threshold = mean of means, then 3x3 mean >= 0.5 on the interior
    unit = (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min())
    mixture = GaussianMixture(n_components=2, random_state=0).fit(unit.reshape(-1, 1).astype(np.float64))
    binary = torch.from_numpy((unit > np.mean(mixture.means_)).astype(np.float32))[None, None]
    expected = binary.clone()
    expected[..., 1:-1, 1:-1] = (F.conv2d(binary, torch.full((1, 1, 3, 3), 1 / 9)) >= 0.5 - 1e-6).float()
    assert np.array_equal(mask, expected[0, 0].numpy().astype(bool))
    assert not mask[30, 30] and mask[12:20, 10:18].all()
    assert np.allclose(final, unit * mask)


def test_threshold_none_computes_no_otsu(monkeypatch):
    import medground.readout.threshold as threshold

    monkeypatch.setattr(threshold, "threshold_multiotsu", lambda *a, **k: pytest.fail("Otsu was computed"))
    heatmap = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    final, mask = threshold.smooth_and_threshold(heatmap, 1.0, "none")
    assert final.min() == 0 and final.max() == 1 and mask.mean() > 0.99


def _unit(values: np.ndarray) -> np.ndarray:
    return (values - values.min()) / (values.max() - values.min())


def _eight(values: np.ndarray) -> np.ndarray:
    return np.round(_unit(values) * 255).astype(np.uint8)


def test_bbm_is_g2g_formula():
    rng = np.random.default_rng(1)
    side, steps, layers, phrases = 8, 3, 2, 2
    activation = torch.from_numpy(rng.random((phrases, side, side)).astype(np.float32))
    image_bias = {f"l{i}": [torch.from_numpy(rng.random((phrases, 4, 4)).astype(np.float32)) for _ in range(steps)]
                  for i in range(layers)}
    text_bias = {f"l{i}": [torch.from_numpy(rng.random((phrases, 8, 8)).astype(np.float32)) for _ in range(steps)]
                 for i in range(layers)}
    merged = merge_biases(activation, image_bias, text_bias)
    for p in range(phrases):
        up = [np.kron(image_bias[f"l{i}"][s][p].numpy(), np.ones((2, 2))) for i in range(layers) for s in range(steps)]
        text = [text_bias[f"l{i}"][s][p].numpy() for i in range(layers) for s in range(steps)]
        m = _eight(np.mean([i @ t for i, t in zip(up, text)], axis=0)) / 255.0
        a = _unit(activation[p].numpy())
        s = max(0.0, structural_similarity(_eight(np.mean(up, axis=0)), _eight(np.mean(text, axis=0))))
        expected = 2 * (1 - s) * s * ((m + a + m * a) / 2) + (1 - s) ** 2 * a + s**2 * m
        assert np.allclose(merged[p].numpy(), expected, atol=1e-5)


def test_token_rules(tiny_model_dir):
    tokenizer = load_model(tiny_model_dir).tokenizer
    phrase = "the small left pleural effusion, with adjacent atelectasis"
    words = lambda rule: tokenizer.decode([tokenizer(phrase)["input_ids"][i]  # noqa: E731
                                           for i in phrase_tokens(tokenizer, phrase, rule).positions]).split()
    assert words("between_special")[0] == "the" and "with" in words("between_special")
    assert words("content_words") == ["small", "left", "pleural", "effusion", "adjacent", "atelectasis"]
    assert phrase_tokens(tokenizer, phrase, "last").positions == (len(tokenizer(phrase)["input_ids"]) - 2,)


def _record_everything(model, latent, timestep, phrase):
    """Plain capture: explicit attention in every block, attn1 and attn2 probabilities of one conditional pass."""
    kept = {}
    hooks = []
    for name, module in model.unet.named_modules():
        if name.endswith(("attn1", "attn2")) and hasattr(module, "save_attn"):
            module.save_attn, module.use_flash_attention = True, False
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: kept.__setitem__(name, m.att_mat)))
    with torch.no_grad():
        model.predict(latent, timestep, model.embed_text([phrase]))
    for hook in hooks:
        hook.remove()
    return kept


@pytest.mark.parametrize("power", [1, 2])
def test_self_attention_refinement_is_a_power_of_the_affinity(tiny_model_dir, power):
    model = load_model(tiny_model_dir)
    layers = Grounder(model, "paper").config.cross_attention_layers
    phrase = "small left pleural effusion"
    tokens = phrase_tokens(model.tokenizer, phrase)
    latent = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    from medground.engine.recorder import AttentionRecorder
    from medground.text import token_weights

    weights = token_weights([tokens], model.max_text_length)
    with torch.no_grad(), AttentionRecorder(model, layers, weights, normalise_each_map=False,
                                            self_attention_power=power) as recorder:
        recorder.record_pass(lambda: model.predict(latent, 42, model.embed_text([phrase])))
    kept = _record_everything(load_model(tiny_model_dir), latent, 42, phrase)
    for layer in layers:
        cross = kept[layer][0].mean(0)[:, list(tokens.positions)].mean(-1).double()  # heads, then tokens
        affinity = kept[layer[:-1] + "1"][0].mean(0).double()
        expected = torch.linalg.matrix_power(affinity, power) @ cross
        side = math.isqrt(expected.numel())
        assert torch.allclose(recorder.sums[layer][0].double(), expected.reshape(side, side), atol=1e-5)


def test_layer_and_step_weights_weight_the_mean(tiny_model_dir, odd_images):
    model = load_model(tiny_model_dir)
    base = {"inference_steps": 60, "gaussian_sigma": 0.0, "threshold": "none", "normalise_each_map": False}
    layers = Grounder(model, "paper", overrides=base).config.cross_attention_layers
    layer_weights = [1.0, 0.0, 3.0, 0.5]
    step_weights = [float(i % 3) for i in range(12)]
    grounder = Grounder(model, "paper", overrides={**base, "layer_weights": layer_weights,
                                                   "step_weights": step_weights})
    phrase = "pleural effusion"
    result = grounder.ground(odd_images["portrait"], phrase)[0]
    # transcription: every (layer, step) map captured plainly on the same window latents, then the weighted mean
    from medground.geometry import Geometry
    from medground.images import read_image

    pixels = read_image(odd_images["portrait"])
    window = grounder.window_latents([Geometry(pixels.shape[1], pixels.shape[0], 128).to_model(pixels)])
    positions = list(phrase_tokens(model.tokenizer, phrase).positions)
    total = torch.zeros(128, 128, dtype=torch.float64)
    for timestep, latent, step_weight in zip(window.timesteps, window.latents, step_weights):
        kept = _record_everything(load_model(tiny_model_dir), latent, timestep, phrase)
        for layer, layer_weight in zip(layers, layer_weights):
            attention = kept[layer][0].mean(0)[:, positions].mean(-1)
            side = math.isqrt(attention.numel())
            up = F.interpolate(attention.reshape(1, 1, side, side).double(), size=(128, 128), mode="bilinear",
                               align_corners=False)[0, 0]
            total += layer_weight * step_weight * up
    expected = ((total - total.min()) / (total.max() - total.min())).numpy()
    # unnormalised maps summed in float32, then stretched by the final min-max: 1.13e-5 on an AVX2 CPU at 58d51cd
    assert np.abs(result.model_heatmap - expected).max() <= 2e-5


def test_layer_weights_by_resolution_follow_each_layers_grid_side(tiny_model_dir):
    model = load_model(tiny_model_dir)
    sides = model.attention_grid_sides()
    overrides = {"layer_weights": "by_resolution", "cross_attention_layers": "all"}
    config = Grounder(model, "paper", overrides=overrides).config
    layers = config.cross_attention_layers
    assert len({sides[path] for path in layers}) > 1  # a mix of grid sides, or the test proves nothing
    assert config.layer_weights == tuple(sides[path] / min(sides[p] for p in layers) for path in layers)
    assert Grounder(model, config).config == config  # resolved once, explicit
    assert parse_assignment("layer_weights=by_resolution") == ("layer_weights", "by_resolution")
    with pytest.raises(ConfigError, match="by_resolution"):
        GroundingConfig(layer_weights="by_grid")


def test_fast_preset_covers_the_paper_window_with_a_fifth_of_the_grid():
    defaults = {"inference_steps": 300, "gaussian_sigma": 2.5, "cross_attention_layers": ["a.attn2"]}
    paper = resolve(defaults, "paper", None, PAPER_FACTS)
    fast = resolve(defaults, "fast", None, PAPER_FACTS)
    fine, coarse = grid_timesteps(1000, 300, "trailing"), grid_timesteps(1000, fast.inference_steps, "trailing")
    window = coarse[fast.window_start:fast.window_stop]
    assert (fine[paper.window_start], fine[paper.window_stop - 1]) == (360, 537)
    assert 360 <= window[0] <= window[0] + 16 and window[-1] <= 537 and window[-1] + 16 >= 537  # same noise levels
    evaluations = lambda c: (c.window_stop - 1) + (c.window_stop - c.window_start)  # noqa: E731
    assert evaluations(paper) == 239 and evaluations(paper) >= 4 * evaluations(fast)
    again = resolve({}, fast, None, PAPER_FACTS)  # a resolved config resolves to itself: recorded runs repeat
    assert again == fast


def test_forward_noising_uses_fixed_noise_independent_of_the_batch(tiny_model_dir, odd_images):
    model = load_model(tiny_model_dir)
    config = {"noising": "forward", "inference_steps": 50, "timestep_spacing": "leading", "timestep_offset": 1,
              "window_start": 0, "window_stop": 40}
    grounder = Grounder(model, "paper", overrides=config)
    alone = grounder.ground(odd_images["portrait"], "pleural effusion")[0]
    assert grounder.unet_evaluations == {"unconditional": 0, "conditional": 40}
    both = Grounder(model, "paper", overrides=config).ground_many([(odd_images["landscape"], ["cardiomegaly"]),
                                                                   (odd_images["portrait"], ["pleural effusion"])])
    assert np.abs(both[1][0].model_heatmap - alone.model_heatmap).max() <= 1e-5
    from medground.engine.invert import forward_noised

    latent = torch.randn(1, 3, 16, 16)
    noised = forward_noised(model, latent, grounder.config, [1, 981])
    alphas = model.noise_schedule.alphas_cumprod()
    expected = alphas[981].sqrt() * latent + (1 - alphas[981]).sqrt() * position_noise(0, 981, (3, 16, 16),
                                                                                       latent.device)
    assert torch.allclose(noised.latents[1], expected)


def test_g2g_preset_on_a_diffusers_model(tmp_path, odd_images):
    model = load_model(random_sd_pipeline(tmp_path / "sd1", version=1))
    grounder = Grounder(model, "g2g", overrides={"inference_steps": 10, "window_stop": 8})
    config = grounder.config
    assert config.cross_attention_layers == tuple(model.attention_layers())  # all 16 layers of SD
    assert len(config.cross_attention_layers) == 16 and config.upsample_size == model.latent_side
    assert grid_timesteps(1000, 50, "leading", 1)[:2] == [1, 21] and config.timestep_offset == 1
    result = grounder.ground(odd_images["portrait"], "small left pleural effusion")[0]
    assert result.model_heatmap.shape == (128, 128) and 0 < result.mask.mean() < 1
    # image-conditioned passes at every grid position (BBM's image bias), plus 2 x 10 for the text-only generation
    assert grounder.unet_evaluations["conditional"] == 10 + 2 * 10


def test_g2g_needs_forward_noising_for_bbm():
    from medground.errors import ConfigError

    with pytest.raises(ConfigError, match="noising='forward'"):
        preset("g2g").with_overrides(noising="inversion")
    with pytest.raises(ConfigError, match="only BBM"):
        preset("paper").with_overrides(guidance_scale=3.0)


def test_effective_config_is_recorded_in_run_json_and_outputs(tmp_path, capsys):
    from medground.cli import main

    out = tmp_path / "run"
    assert main(["eval", "--dataset", "phantoms", "--seed", "8300000", "--n", "4", "--method", "ldm", "--model",
                 "toy", "--preset", "fast", "--set", "threshold=gmm", "--out", str(out)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["overrides"] == {"threshold": "gmm"} and run["config"]["threshold"] == "gmm"
    assert run["config"]["inference_steps"] == 20 and run["config"]["grid_coarsening"] == 1
    (tmp_path / "config.json").write_text(json.dumps(run["config"]))
    image = tmp_path / "phantom.png"
    from PIL import Image

    Image.fromarray((generate_phantom(3).image * 255).astype(np.uint8)).save(image)
    assert main(["ground", str(image), "cardiomegaly", "--config", str(tmp_path / "config.json"), "--out",
                 str(tmp_path / "out")]) == 0
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["config"] == run["config"]
