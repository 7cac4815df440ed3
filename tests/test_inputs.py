"""Bad input gives specific errors; every supported image kind reads to the same [0, 1] grayscale."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medground import Grounder, load_model
from medground.errors import ImageError, PhraseError
from medground.images import read_image
from medground.text import phrase_tokens


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "nope.png")
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(ImageError, match="cannot read"):
        read_image(broken)
    fake_dicom = tmp_path / "broken.dcm"
    fake_dicom.write_bytes(b"\0" * 200)
    with pytest.raises(ImageError, match="DICOM"):
        read_image(fake_dicom)


def test_tiny_and_transparent_images(tmp_path):
    with pytest.raises(ImageError, match="at least"):
        read_image(np.zeros((1, 1), dtype=np.uint8))
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[..., :3] = 90
    rgba[:20, :, :3] = 30
    read = read_image(Image.fromarray(rgba, "RGBA"))
    assert np.allclose(read[20:], 90 / 255) and np.allclose(read[:20], 30 / 255)
    rgba[0, 0, 3] = 10
    with pytest.raises(ImageError, match="alpha"):
        read_image(Image.fromarray(rgba, "RGBA"))


def test_path_pil_array_and_16_bit_agree(tmp_path, nih_root):
    path = nih_root / "images" / "00000457_004.png"
    from_path = read_image(path)
    assert from_path.dtype == np.float32 and from_path.min() >= 0 and from_path.max() <= 1
    assert np.array_equal(from_path, read_image(Image.open(path)))
    eight_bit = np.asarray(Image.open(path).convert("L"))
    assert np.array_equal(from_path, read_image(eight_bit))
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray(eight_bit.astype(np.uint16) * 257).save(sixteen)
    assert np.allclose(read_image(sixteen), from_path, atol=1e-6)


def test_dicom_monochrome1_and_16_bit(tmp_path):
    from builders import write_dicom

    pixels = np.tile(np.arange(64, dtype=np.uint16) * 64, (48, 1))  # 12-bit ramp, 0 .. 4032
    for photometric, first, last in (("MONOCHROME2", 0.0, 1.0), ("MONOCHROME1", 1.0, 0.0)):
        image = read_image(write_dicom(tmp_path / f"{photometric}.dcm", pixels, photometric))
        assert image.shape == (48, 64)
        assert image[0, 0] == pytest.approx(first) and image[0, -1] == pytest.approx(last)


def test_phrase_errors(tiny_model):
    with pytest.raises(PhraseError, match="non-empty"):
        phrase_tokens(tiny_model.tokenizer, "   ")
    with pytest.raises(PhraseError, match="at most 77"):
        phrase_tokens(tiny_model.tokenizer, "effusion " * 80)
    tokens = phrase_tokens(tiny_model.tokenizer, "small left pleural effusion")
    assert tokens.positions == tuple(range(1, len(tokens.input_ids) - 1))


def test_grounder_rejects_bad_input_before_any_work(tiny_model, tmp_path):
    grounder = Grounder(tiny_model)
    with pytest.raises(PhraseError):
        grounder.ground(np.zeros((64, 64), dtype=np.float32), [""])
    with pytest.raises(ImageError):
        grounder.ground(tmp_path / "missing.png", ["effusion"])
