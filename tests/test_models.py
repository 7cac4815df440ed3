"""Model directories, the loader's errors, and conversion of old-format MONAI checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from medground import load_model
from medground.backbones.monai_convert import convert_monai_ldm
from medground.backbones.weights import sha256_of
from medground.errors import ModelLoadError, WeightsNotFoundError


def to_old_generative_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MONAI core names -> the old ``generative`` package names of the published checkpoints."""
    old = {}
    for key, value in state.items():
        if "transformer_blocks" in key and ".out_proj." in key:
            key = key.replace(".out_proj.", ".to_out.0.")
        old[key.replace("postconv", "conv")] = value
    return old


def test_missing_model_names_the_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "absent")):
        load_model(tmp_path / "absent")


def test_missing_and_mismatched_weights(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "unet.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=str(copy / "unet.safetensors")):
        load_model(copy)
    shutil.rmtree(copy)
    shutil.copytree(tiny_model_dir, copy)
    state = load_file(str(copy / "unet.safetensors"))
    state.pop(next(iter(state)))
    save_file(state, str(copy / "unet.safetensors"))
    with pytest.raises(ModelLoadError, match="1 missing keys"):
        load_model(copy)


def test_hub_text_encoder_that_cannot_be_fetched_names_the_id(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="no-such-org/no-such-text-encoder"):
        load_model(tiny_model_dir, text_encoder="no-such-org/no-such-text-encoder@abc123")


def test_convert_old_checkpoints_round_trip(tiny_model_dir, tmp_path):
    original = load_model(tiny_model_dir)
    spec = json.loads((tiny_model_dir / "model.json").read_text())
    autoencoder_pth, unet_pth = tmp_path / "autoencoder.pth", tmp_path / "diffusion_model.pth"
    torch.save(to_old_generative_keys(original.autoencoder.state_dict()), autoencoder_pth)
    torch.save(to_old_generative_keys(original.unet.state_dict()), unet_pth)
    with pytest.raises(RuntimeError):  # a plain load fails: that is why the converter exists
        original.unet.load_state_dict(torch.load(unet_pth))
    out = convert_monai_ldm(autoencoder_pth, unet_pth, str(tiny_model_dir), tmp_path / "converted",
                            autoencoder_args=spec["autoencoder"]["args"], unet_args=spec["unet"]["args"],
                            image_size=spec["image_size"])
    converted = load_model(out)
    record = json.loads((out / "model.json").read_text())["provenance"]["converted_from"]
    assert record["unet"]["sha256"] == sha256_of(unet_pth)
    for part in ("autoencoder", "unet"):
        ours, theirs = getattr(original, part).state_dict(), getattr(converted, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    image = torch.rand(1, 1, 128, 128)
    assert torch.equal(original.encode_images(image), converted.encode_images(image))
    assert np.array_equal(original.embed_text(["effusion"]).numpy(), converted.embed_text(["effusion"]).numpy())


def test_convert_rejects_incomplete_checkpoint(tiny_model_dir, tmp_path):
    original = load_model(tiny_model_dir)
    spec = json.loads((tiny_model_dir / "model.json").read_text())
    old = to_old_generative_keys(original.unet.state_dict())
    old.pop(next(k for k in old if "to_out.0.weight" in k))
    torch.save(old, tmp_path / "unet.pth")
    torch.save(to_old_generative_keys(original.autoencoder.state_dict()), tmp_path / "ae.pth")
    with pytest.raises(ModelLoadError):
        convert_monai_ldm(tmp_path / "ae.pth", tmp_path / "unet.pth", str(tiny_model_dir), tmp_path / "out",
                          autoencoder_args=spec["autoencoder"]["args"], unet_args=spec["unet"]["args"])
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        convert_monai_ldm(tmp_path / "ae.pth", tmp_path / "missing.pth", str(tiny_model_dir), tmp_path / "out",
                          autoencoder_args=spec["autoencoder"]["args"], unet_args=spec["unet"]["args"])
