"""The web app's logic without a browser: every bad input is a message, answers say whether the cache was used."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from PIL import Image

from medground import Grounder
from medground.app.session import MAX_TEXT_CHARS, Answer, Session, boxes_table, status_html
from medground.cli import build_parser, main
from medground.datasets.phantoms import generate_phantom
from medground.engine.invert import unconditional_evaluations


@pytest.fixture()
def session(toy_model, tmp_path):
    return Session(Grounder(toy_model, "paper"), tmp_path / "work", {"model": "toy", "preset": "paper"})


@pytest.fixture(scope="module")
def phantom_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "phantom 2.png"
    Image.fromarray((generate_phantom(2).image * 255).round().astype(np.uint8)).save(path)
    return path


def test_phrases_then_report_on_the_same_image_reuse_the_inversion(session, phantom_png):
    first = session.answer(str(phantom_png), "Phrases", "left mid zone nodule\n\n  small right pleural effusion \n")
    runs = dict(session.grounder.unet_evaluations)
    assert runs["unconditional"] == unconditional_evaluations(session.grounder.config)  # one inversion
    assert not first.error and first.message.startswith(
        f"Grounded 2 findings. Inverted the image ({runs['unconditional']} + {runs['conditional']} UNet evaluations")
    assert [(f.text, f.status) for f in first.grounding.findings] == \
        [("left mid zone nodule", "typed"), ("small right pleural effusion", "typed")]
    expected = session.grounder.ground(phantom_png, ["left mid zone nodule", "small right pleural effusion"])
    assert [f.result.boxes for f in first.grounding.findings] == [r.boxes for r in expected]
    assert session.preview(str(phantom_png)).message.endswith("Its inversion is cached: a query will reuse it.")

    runs = dict(session.grounder.unet_evaluations)
    second = session.answer(str(phantom_png), "Report", "Left mid zone nodule. No pneumothorax.")
    assert session.grounder.unet_evaluations["unconditional"] == runs["unconditional"]
    conditional = session.grounder.unet_evaluations["conditional"] - runs["conditional"]
    assert f"Reused the cached inversion of this image: only the conditional passes ran ({conditional} UNet" \
        in second.message
    assert [f.text for f in second.grounding.findings] == ["Left mid zone nodule"]
    record = json.loads(second.files[0].read_text())
    assert record["image"] == "phantom 2.png" and record["model"] == "toy" and record["preset"] == "paper"
    assert [m["text"] for m in record["not_grounded"]] == ["pneumothorax"]
    assert {p.suffix for p in second.files} == {".json", ".png", ".npy"}


@pytest.mark.parametrize(("make", "mode", "text", "expected"), [
    (None, "Phrases", "nodule", "upload a radiograph first"),
    ("corrupt", "Phrases", "nodule", "cannot read broken.png as an image (PNG, JPEG or DICOM expected)"),
    ("text", "Phrases", "nodule", "cannot read notes.txt as an image"),
    ("flat", "Phrases", "nodule", "has no contrast"),
    ("phantom", "Phrases", " \n \n", "type at least one phrase (one per line)"),
    ("phantom", "Phrases", "opacity " * 30, "the text encoder takes at most 24"),
    ("phantom", "Report", "   ", "the report is empty"),
    ("phantom", "Report", "x" * (MAX_TEXT_CHARS + 1), f"the limit is {MAX_TEXT_CHARS}"),
])
def test_bad_input_is_a_message(session, phantom_png, tmp_path, make, mode, text, expected):
    uploads = {"corrupt": ("broken.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 50), "text": ("notes.txt", b"hello"),
               "flat": ("flat.png", None)}
    upload = None
    if make == "phantom":
        upload = str(phantom_png)
    elif make == "flat":
        upload = str(tmp_path / "flat.png")
        Image.fromarray(np.full((64, 64), 90, dtype=np.uint8)).save(upload)
    elif make:
        name, data = uploads[make]
        (tmp_path / name).write_bytes(data)
        upload = str(tmp_path / name)
    answer = session.answer(upload, mode, text)
    assert answer.error and expected in answer.message and answer.grounding is None
    assert str(tmp_path) not in answer.message  # the server's folders stay out of the page
    assert session.grounder.unet_evaluations == {"unconditional": 0, "conditional": 0}


def test_report_without_positive_finding_says_so(session, phantom_png):
    answer = session.answer(str(phantom_png), "Report", "No pneumothorax or pleural effusion.")
    assert not answer.error and answer.grounding.findings == []
    assert answer.message.startswith("No positive or uncertain finding was found in the report, so nothing was "
                                     "grounded and no inversion ran")
    assert boxes_table(answer.grounding) == ""


def test_page_text_is_escaped():
    html = status_html(Answer("cannot read <script>.png", error=True))
    assert "&lt;script&gt;" in html and "<script>" not in html and 'role="alert"' in html


def test_serve_defaults_to_loopback_without_share():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.share, args.model, args.max_upload_mb) == ("127.0.0.1", 7860, False, "toy", 20)


def test_serve_on_a_taken_port_is_one_line_before_the_model_loads(capsys, monkeypatch):
    monkeypatch.setattr("medground.loading.load_model", lambda *a, **k: pytest.fail("model loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err.startswith(f"medground: error: cannot listen on 127.0.0.1:{port}: Address already "
                                              "in use (choose another --port")
    assert main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err == "medground: error: --port must be between 1 and 65535, got 70000\n"


def test_dicom_upload_without_extension_is_read(session, tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = (generate_phantom(2).image * 4095).round().astype(np.uint16)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 1, 16, 12, 11
    dataset.PixelRepresentation, dataset.PhotometricInterpretation = 0, "MONOCHROME2"
    dataset.PixelData = pixels.tobytes()
    upload = tmp_path / "IM0001"  # as PACS exports name them: no extension
    dataset.save_as(upload, enforce_file_format=True)
    preview = session.preview(str(upload))
    assert not preview.error and preview.message == "IM0001: 64x64 pixels."
    np.testing.assert_allclose(preview.pixels, (pixels - pixels.min()) / (pixels.max() - pixels.min()), atol=1e-6)
