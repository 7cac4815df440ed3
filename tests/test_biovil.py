"""BioViL / BioViL-T baselines on random weights of their real architectures, loaded through the real loading code.

The weights repository is laid out as on the Hugging Face hub (text model + vocab.txt + the image encoder's .pt side
by side); the text model is CXR-BERT's real configuration (BERT-base + 128-d projection), the image encoders are
hi-ml-multimodal's ResNet-50 (BioViL) and multi-image ResNet-50 + ViT pooler (BioViL-T). Needs the optional extra
(``pip install medground[baselines]``); ``make test`` runs this file in its own environment (see the Makefile).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from medground.errors import ImageError, ModelLoadError, PhraseError, WeightsNotFoundError
from medground.methods import MethodOptions, make_method

pytest.importorskip("health_multimodal", reason="needs the optional extra medground[baselines]")

from health_multimodal.image.model.model import ImageModel  # noqa: E402
from health_multimodal.image.model.types import ImageEncoderType  # noqa: E402
from health_multimodal.text.model import CXRBertConfig, CXRBertModel  # noqa: E402

from medground.methods.biovil import VARIANTS, load_biovil  # noqa: E402

CXR_BERT = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2, projection_size=128)
PHRASE = "small left pleural effusion"


def write_vocab(path) -> None:
    """CXR-BERT's size; letters and ##letters let every lowercase word tokenise into real pieces."""
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase + string.digits + ".,-")
    pieces += ["##" + c for c in string.ascii_lowercase + string.digits]
    pieces += ["left", "right", "small", "pleural", "effusion", "heart", "lung", "opacity"]
    pieces += [f"filler{i}" for i in range(CXR_BERT["vocab_size"] - len(pieces))]
    path.write_text("\n".join(pieces) + "\n")


@pytest.fixture(scope="module")
def text_repo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cxr_bert")
    torch.manual_seed(0)
    CXRBertModel(CXRBertConfig(**CXR_BERT)).save_pretrained(folder)
    write_vocab(folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512,
                                                              "tokenizer_class": "CXRBertTokenizer"}))
    return folder


@pytest.fixture(scope="module")
def repos(tmp_path_factory, text_repo):
    """variant name -> a local copy of its weights repository (random weights)."""
    made = {}
    for name, variant in VARIANTS.items():
        folder = tmp_path_factory.mktemp(name)
        for item in text_repo.iterdir():
            os.link(item, folder / item.name)
        torch.manual_seed(1)
        kind = ImageEncoderType.RESNET50_MULTI_IMAGE if variant.multi_image else ImageEncoderType.RESNET50
        torch.save(ImageModel(img_encoder_type=kind, joint_feature_size=128).state_dict(),
                   folder / variant.image_weights)
        made[name] = folder
    return made


@pytest.fixture(scope="module")
def methods(repos):
    return {name: make_method(name, MethodOptions(biovil_weights=str(folder))) for name, folder in repos.items()}


def independent_map(method, path, phrase: str, crop: int) -> np.ndarray:
    """Plain re-implementation of docs/method.md section 9 with PIL, torch and scipy; only the networks are shared."""
    pixels = np.asarray(Image.open(path)).astype(float)
    pixels = ((pixels - pixels.min()) / (pixels - pixels.min()).max() * 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert("L")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(512 * long / short)
    resized = image.resize((512, new_long) if width == short else (new_long, 512), Image.BILINEAR)
    top, left = int(round((resized.height - crop) / 2)), int(round((resized.width - crop) / 2))
    cropped = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    batch = torch.from_numpy(cropped)[None, None].repeat(1, 3, 1, 1)

    image_model = method.engine.image_inference_engine.model
    text = method.engine.text_inference_engine
    with torch.no_grad():
        patches = image_model.get_patchwise_projected_embeddings(batch, normalize=True)[0]
        tokens = text.tokenizer([phrase], padding="longest", return_tensors="pt")
        phrase_embedding = text.model.get_projected_text_embeddings(tokens.input_ids, tokens.attention_mask)
    grid = (patches @ phrase_embedding[0]).numpy()
    grid = ndimage.gaussian_filter(grid, sigma=1.5)
    side = int(crop * short / 512)
    upsampled = F.interpolate(torch.from_numpy(grid)[None, None], size=(side, side), mode="nearest")[0, 0]
    margins = (math.floor((width - side) / 2), math.ceil((width - side) / 2),
               math.floor((height - side) / 2), math.ceil((height - side) / 2))
    return F.pad(upsampled, margins, value=float("nan")).clamp(min=0).numpy()


@pytest.fixture(scope="module")
def grey_image(nih_root):
    """A grayscale NIH radiograph (hi-ml reads RGBA files differently from a plain conversion)."""
    for path in sorted((nih_root / "images").glob("*.png")):
        if Image.open(path).mode == "L":
            return path
    pytest.skip("no grayscale NIH image")


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_heatmap_equals_independent_computation(methods, grey_image, name):
    method = methods[name]
    heatmap = method.heatmap(grey_image, PHRASE)
    expected = independent_map(method, grey_image, PHRASE, VARIANTS[name].crop_size)
    width, height = Image.open(grey_image).size
    assert heatmap.shape == (height, width) and heatmap.dtype == np.float32
    assert np.array_equal(np.isnan(heatmap), np.isnan(expected))
    assert np.isnan(heatmap).any() and (np.nan_to_num(heatmap) > 0).any()
    assert np.nanmin(heatmap) >= 0
    assert np.nanmax(np.abs(heatmap - expected)) <= 1e-5


def test_other_suffix_spellings_are_read_like_the_original(methods, grey_image, tmp_path):
    copy = tmp_path / "image.PNG"
    shutil.copy(grey_image, copy)
    method = methods["biovil"]
    np.testing.assert_array_equal(method.heatmap(copy, PHRASE), method.heatmap(grey_image, PHRASE))


def test_unreadable_or_unsupported_images_are_refused(methods, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        methods["biovil"].heatmap(broken, PHRASE)
    with pytest.raises(ImageError, match="not found"):
        methods["biovil"].heatmap(tmp_path / "absent.png", PHRASE)


def test_phrase_checks(methods, grey_image):
    method = methods["biovil"]
    with pytest.raises(PhraseError, match="empty"):
        method.heatmap(grey_image, "  ")
    with pytest.raises(PhraseError, match="at most 512"):
        method.heatmap(grey_image, " ".join(["effusion"] * 600))
    with pytest.raises(PhraseError, match="special tokens"):
        method.heatmap(grey_image, "effusion [SEP] heart")


def test_checkpoint_in_the_layout_transformers_4_wrote_loads(repos, methods, grey_image, tmp_path):
    """The hub repos hold a pytorch_model.bin from transformers 4: a persistent position_ids buffer, no copy of
    the decoder weight tied to the word embeddings. Loading it must neither fail the strict check nor change the map."""
    from safetensors.torch import load_file

    old = tmp_path / "repo"
    shutil.copytree(repos["biovil"], old)
    weights = load_file(old / "model.safetensors")
    weights.pop("cls.predictions.decoder.weight", None)  # transformers 5 does not save it either
    weights["bert.embeddings.position_ids"] = torch.arange(CXR_BERT["max_position_embeddings"])[None]
    torch.save(weights, old / "pytorch_model.bin")
    (old / "model.safetensors").unlink()
    heatmap = load_biovil("biovil", str(old)).heatmap(grey_image, PHRASE)
    np.testing.assert_allclose(heatmap, methods["biovil"].heatmap(grey_image, PHRASE), rtol=0, atol=1e-6)


def test_missing_image_weights_name_the_path(repos, tmp_path):
    partial = tmp_path / "repo"
    shutil.copytree(repos["biovil"], partial)
    (partial / VARIANTS["biovil"].image_weights).unlink()
    with pytest.raises(WeightsNotFoundError, match=str(partial / VARIANTS["biovil"].image_weights)):
        load_biovil("biovil", str(partial))


def test_image_weights_of_the_other_architecture_are_refused(repos, tmp_path):
    mixed = tmp_path / "repo"
    shutil.copytree(repos["biovil"], mixed)
    shutil.copy(repos["biovil-t"] / VARIANTS["biovil-t"].image_weights, mixed / VARIANTS["biovil"].image_weights)
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_biovil("biovil", str(mixed))


def test_text_weights_with_a_missing_parameter_are_refused(repos, tmp_path):
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "repo"
    shutil.copytree(repos["biovil"], damaged)
    weights = load_file(damaged / "model.safetensors")
    del weights["cls_projection_head.dense_to_output.weight"]
    save_file(weights, damaged / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="cls_projection_head.dense_to_output.weight"):
        load_biovil("biovil", str(damaged))


def test_hub_weights_unavailable_name_the_hub_id(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="microsoft/BiomedVLP-BioViL-T.*v1.0"):
        load_biovil("biovil-t")


def test_eval_cli_with_biovil(repos, nih_root, tmp_path):
    from medground.cli import main

    run = tmp_path / "run"
    assert main(["eval", "--dataset", "nih", "--root", str(nih_root), "--method", "biovil-t",
                 "--biovil-weights", str(repos["biovil-t"]), "--limit", "3", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert all(0 <= row["auroc"] <= 1 and row["cnr"] >= 0 for row in rows)
    assert json.loads((run / "run.json").read_text())["method"] == "biovil-t"
    assert (run / "summary.json").is_file() and (run / "contact_sheet.png").is_file()
