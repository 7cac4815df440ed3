"""The diffusers family: the engine against a plain reference on SD-1.x and SD-2.x layouts, and local imitations of
RoentGen v1, RoentGen-v2 and Generate-to-Ground's CXR-BERT LDM loaded through the real loading code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders import random_g2g_sources, random_sd_pipeline
from reference_diffusers import reference_heatmap

from medground import Grounder, load_model
from medground.backbones.diffusers_import import import_diffusers
from medground.cli import main
from medground.errors import ModelLoadError, WeightsNotFoundError

PHRASES = ["small left pleural effusion", "right lower lobe consolidation concerning for pneumonia"]
QUARTER_LAYERS = [  # the attn2 layers at 16x16 for a 64x64 latent (here 4x4 for 16x16): SD's down_blocks.2, up_blocks.1
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2", "down_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
]


@pytest.fixture(scope="module", params=[1, 2], ids=["sd1-epsilon", "sd2-v-prediction"])
def pipeline(request, tmp_path_factory):
    return random_sd_pipeline(tmp_path_factory.mktemp(f"sd{request.param}"), version=request.param)


def test_engine_matches_the_plain_reference(pipeline, odd_images):
    model = load_model(pipeline)
    grounder = Grounder(model, "paper")
    assert list(grounder.config.cross_attention_layers) == QUARTER_LAYERS
    assert (grounder.config.inference_steps, grounder.config.window, grounder.config.gaussian_sigma) == \
        (300, (120, 180), 2.5)
    expected_prediction = "epsilon" if pipeline.name.startswith("sd1") else "v_prediction"
    assert model.noise_schedule.prediction_type == expected_prediction
    grounder = Grounder(model, "paper", overrides={"inference_steps": 60})  # the same grid rule, 5x cheaper
    for image in odd_images.values():
        results = grounder.ground(image, PHRASES)
        for phrase, result in zip(PHRASES, results):
            expected_map, expected_original = reference_heatmap(pipeline, image, phrase, QUARTER_LAYERS, 60)
            assert np.abs(result.model_heatmap - expected_map).max() <= 1e-5
            assert 0.02 < (expected_map > 0).mean() < 0.98  # Otsu split the map: not trivially equal
            assert np.array_equal(np.isnan(result.heatmap), np.isnan(expected_original))
            assert np.nanmax(np.abs(result.heatmap - expected_original)) <= 1e-5
        assert not np.allclose(results[0].model_heatmap, results[1].model_heatmap)


def test_sd2_pads_with_exclamation_marks(tmp_path):
    model = load_model(random_sd_pipeline(tmp_path / "sd2", version=2))
    ids = model.tokenizer([""], padding="max_length", max_length=model.max_text_length).input_ids[0]
    assert model.tokenizer.convert_ids_to_tokens(ids[-1]) == "!"


def test_roentgen_v1_layout_loads_from_its_pipeline_folder_and_grounds(tmp_path, odd_images, capsys):
    """RoentGen v1 is an SD-1.x pipeline (its model_index.json names a safety checker and a feature extractor, which
    grounding does not need); a pipeline folder is a valid --model as it is."""
    folder = random_sd_pipeline(tmp_path / "roent-gen-v1-0", version=1)
    assert json.loads((folder / "model_index.json").read_text())["safety_checker"][1] == "StableDiffusionSafetyChecker"
    code = main(["ground", str(odd_images["portrait"]), "small left pleural effusion", "--model", str(folder),
                 "--set", "inference_steps=60", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    record = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert record["boxes"] and record["config"]["cross_attention_layers"] == QUARTER_LAYERS


def test_roentgen_v2_layout_imports_with_provenance_and_terms(tmp_path, odd_images):
    source = random_sd_pipeline(tmp_path / "RoentGen-v2", version=2)
    out = import_diffusers(str(source), tmp_path / "imported", name="roentgen-v2-imitation",
                           data_terms="MIMIC-CXR credentialed access (imitation)")
    spec = json.loads((out / "model.json").read_text())
    assert spec["family"] == "diffusers" and spec["noise_schedule"]["prediction_type"] == "v_prediction"
    assert spec["grounding_defaults"]["cross_attention_layers"] == QUARTER_LAYERS
    unet_files = {f["file"]: f["sha256"] for f in spec["provenance"]["files"]["unet"]}
    assert len(unet_files["diffusion_pytorch_model.safetensors"]) == 64
    assert spec["provenance"]["data_terms"] == "MIMIC-CXR credentialed access (imitation)"
    imported, direct = load_model(out), load_model(source)
    for part in ("unet", "autoencoder", "text_encoder"):
        ours, theirs = imported.networks()[part].state_dict(), direct.networks()[part].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    settings = {"inference_steps": 60}
    a = Grounder(imported, overrides=settings).ground(odd_images["landscape"], PHRASES[0])[0]
    b = Grounder(direct, overrides=settings).ground(odd_images["landscape"], PHRASES[0])[0]
    assert np.array_equal(a.model_heatmap, b.model_heatmap)


def test_generate_to_ground_model_composed_from_its_three_sources(tmp_path, odd_images):
    """G2G = SD-1.5's VAE and scheduler + its own UNet (unet_ema/) + CXR-BERT-specialized, whose remote-code class
    is loaded as the BERT it is; prompts are embedded with their attention mask, padded to 77 tokens."""
    sources = random_g2g_sources(tmp_path / "hub")
    out = import_diffusers(str(sources["pipeline"]), tmp_path / "g2g", unet=f"{sources['g2g']}:unet_ema",
                           text_encoder=str(sources["cxr_bert"]), name="g2g-imitation")
    model = load_model(out)
    spec = json.loads((out / "model.json").read_text())
    assert type(model.text_encoder).__name__ == "BertModel" and model.text_attention_mask
    assert model.max_text_length == 77 and spec["provenance"]["imported_from"]["unet"]["subfolder"] == "unet_ema"
    ema = load_model(sources["pipeline"]).unet.state_dict()  # not the pipeline's own UNet ...
    assert not all(torch.equal(v, model.unet.state_dict()[k]) for k, v in ema.items())
    from medground.backbones.diffusers import load_component

    expected = load_component(sources["g2g"] / "unet_ema", "unet").state_dict()  # ... but G2G's EMA UNet
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in expected.items())
    tokens = model.tokenizer(["small left pleural effusion"], padding="max_length", max_length=77,
                             return_tensors="pt")
    with torch.no_grad():
        masked = model.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
        assert torch.equal(model.embed_text(["small left pleural effusion"]), masked)
        assert torch.equal(model.embed_text([""]), model.text_encoder(model.tokenizer(
            [""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0])
    result = Grounder(model, overrides={"inference_steps": 60}).ground(odd_images["portrait"], PHRASES[0])[0]
    assert result.boxes and not result.flat


def test_a_text_encoder_of_the_wrong_width_is_refused(tmp_path):
    sources = random_g2g_sources(tmp_path / "hub")
    with pytest.raises(ModelLoadError, match="attends to 48-d text states.*gives 64-d"):
        import_diffusers(str(random_sd_pipeline(tmp_path / "sd2", version=2)), tmp_path / "bad",
                         text_encoder=str(sources["cxr_bert"]))


def test_hub_ids_that_cannot_be_fetched_name_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsNotFoundError, match="stanfordmimi/RoentGen-v2.*'v1.0'"):
        load_model("stanfordmimi/RoentGen-v2@v1.0")
    with pytest.raises(WeightsNotFoundError, match="StanfordAIMI/roent-gen-v1-0"):
        import_diffusers("StanfordAIMI/roent-gen-v1-0", tmp_path / "out")
