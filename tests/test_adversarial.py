"""Bad input on every surface: images, DICOM, phrases, model directories, settings, CSVs, run folders, CLI flags.

Each case must end in a specific, one-line error (a MedgroundError; exit status 2 on the command line) or in a
correct result, never a traceback; and nothing outside ``--out`` may change. The cases are generated per surface
from what an adversarial pass found, widened to the neighbouring inputs of each defect.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import write_dicom
from PIL import Image
from safetensors.torch import load_file, save_file

from medground import Grounder, load_model
from medground.cli import main
from medground.datasets import load_dataset
from medground.errors import (
    ConfigError,
    DatasetError,
    ImageError,
    MedgroundError,
    ModelLoadError,
    PhraseError,
    RunDirError,
    WeightsNotFoundError,
)
from medground.images import read_image
from medground.loading import KNOWN_MODELS

NIH_MINI = Path(__file__).resolve().parent / "data" / "nih-mini"


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Content hash of every file under ``root`` except those under ``skip``."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and (skip is None or skip not in path.parents):
            found[str(path.relative_to(root))] = hashlib.sha1(path.read_bytes()).hexdigest()
    return found


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def phantom_png(path: Path, seed: int = 5) -> Path:
    from medground.datasets.phantoms import generate_phantom

    Image.fromarray((generate_phantom(seed).image * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def sandbox(tmp_path) -> Path:
    """Inputs the commands read (an image, a copy of the toy model); the tests check they never change."""
    (tmp_path / "inputs").mkdir()
    phantom_png(tmp_path / "inputs" / "phantom.png")
    shutil.copytree(KNOWN_MODELS["toy"], tmp_path / "inputs" / "toy")
    return tmp_path


# --- images -------------------------------------------------------------------------------------------------------
def _truncated_png(folder: Path) -> Path:
    data = (NIH_MINI / "images" / "00000072_000.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    return folder / "cut.png"


def _write(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


def _image(folder: Path, name: str, array: np.ndarray, mode: str | None = None) -> Path:
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(folder / name)
    return folder / name


def _ramp(dtype, high: int, shape=(48, 64)) -> np.ndarray:
    return (np.linspace(0, high, shape[0] * shape[1]).reshape(shape)).astype(dtype)


BAD_IMAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing": (lambda f: f / "nope.png", "not found"),
    "directory": (lambda f: f, "is a folder, not an image file"),
    "text-as-png": (lambda f: _write(f, "text.png", b"not an image"), "cannot read"),
    "empty-file": (lambda f: _write(f, "empty.png", b""), "cannot read"),
    "truncated-png": (_truncated_png, "cannot read"),
    "garbage-dcm": (lambda f: _write(f, "x.dcm", b"\0" * 300), "DICOM"),
    "tiny": (lambda f: _image(f, "tiny.png", np.full((8, 8), 3, np.uint8) + np.eye(8, dtype=np.uint8)), "at least"),
    "constant": (lambda f: _image(f, "flat.png", np.full((64, 64), 90, np.uint8)), "no contrast"),
    "transparent": (lambda f: _image(f, "alpha.png", np.dstack([_ramp(np.uint8, 255)] * 3 +
                                                               [np.full((48, 64), 100, np.uint8)]), "RGBA"), "alpha"),
    "int32-over-16-bit": (lambda f: _image(f, "i32.tif", _ramp(np.int32, 200_000), "I"), "outside 16 bits"),
    "nan-array": (lambda f: np.where(np.eye(40) > 0, np.nan, 0.5), "NaN"),
    "rgb-array": (lambda f: np.zeros((40, 40, 3), np.uint8), "2-D grayscale"),
    "bool-array": (lambda f: np.eye(40, dtype=bool), "unsupported pixel type"),
    "not-an-image": (lambda f: 42, "expected a path"),
    "multi-frame-dicom": (lambda f: write_dicom(f / "frames.dcm", np.stack([_ramp(np.uint16, 4000)] * 2)), "2-D"),
    "palette-dicom": (lambda f: write_dicom(f / "palette.dcm", _ramp(np.uint16, 200), photometric="PALETTE COLOR"),
                      "MONOCHROME"),
    "multi-frame-gif": (lambda f: _animation(f / "anim.gif"), "2 frames"),
    "float-0-255-array": (lambda f: _ramp(np.float64, 255), r"span \[0, 255\].*divide 8-bit data by 255"),
    "float-centred-array": (lambda f: _ramp(np.float64, 1) - 0.5, r"span \[-0.5, 0.5\]"),
    "float-tiff-huge": (lambda f: _image(f, "big.tif", _ramp(np.float32, 255_000), "F"), "must lie in"),
}


def _animation(path: Path) -> Path:
    frames = [Image.fromarray(_ramp(np.uint8, 255)), Image.fromarray(255 - _ramp(np.uint8, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_are_clear_errors(case, tmp_path):
    make, message = BAD_IMAGES[case]
    with pytest.raises(ImageError, match=message):
        read_image(make(tmp_path))


def test_decompression_bomb_limit_is_an_error_that_says_how_to_lift_it(tmp_path, monkeypatch):
    path = _image(tmp_path, "big.png", _ramp(np.uint8, 255, (64, 64)))
    monkeypatch.setenv("MEDGROUND_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageError, match="MEDGROUND_MAX_IMAGE_PIXELS"):
        read_image(path)
    monkeypatch.setenv("MEDGROUND_MAX_IMAGE_PIXELS", "100000")
    assert read_image(path).shape == (64, 64)


def test_integer_depths_scale_by_their_real_range(tmp_path):
    """32-bit integers that fit 16 bits read as 16-bit; 12-bit data in 16-bit PNGs reads as 12-bit (documented)."""
    sixteen = _ramp(np.uint16, 60_000)
    as_int32 = read_image(_image(tmp_path, "i32.tif", sixteen.astype(np.int32), "I"))
    assert np.allclose(as_int32, sixteen / 65535.0, atol=1e-6)
    twelve = _ramp(np.uint16, 4095)
    path = tmp_path / "twelve.png"
    Image.fromarray(twelve).save(path)
    assert read_image(path).max() == pytest.approx(1.0) and np.allclose(read_image(path), twelve / 4095.0)
    assert read_image(np.tile(np.array([0, 65535], dtype=np.uint16), (40, 20))).max() == 1.0


def test_dicom_applies_the_modality_lut_before_the_window(tmp_path):
    """RescaleIntercept -2000 and a window around -1000: without the modality LUT every pixel fell outside the
    window and the image read as all zeros; with it the window maps the values as the file intends."""
    stored = _ramp(np.uint16, 4000)
    path = write_dicom(tmp_path / "ct-like.dcm", stored, RescaleIntercept=-2000, RescaleSlope=1,
                       WindowCenter=-1000, WindowWidth=1000)
    image = read_image(path)
    values = stored.astype(np.float64) - 2000  # modality values
    low, high = -1500, -500  # the window
    expected = np.clip((values - low) / (high - low), 0, 1)
    assert np.abs(image - expected).max() < 0.01
    assert 0.1 < (image == 0).mean() < 0.15 and 0.6 < (image == 1).mean() < 0.65  # below / above the window


# --- phrases -------------------------------------------------------------------------------------------------------
BAD_PHRASES = {"empty": "", "blank": "   \t", "none": None, "number": 7, "nul": "effusion\x00",
               "too-long": "effusion " * 80, "special-token": "<|endoftext|>", "only-start-token": "<|startoftext|>"}


@pytest.fixture(scope="module")
def toy_grounder():
    return Grounder(load_model("toy"))


@pytest.mark.parametrize("case", sorted(BAD_PHRASES))
def test_bad_phrases_fail_before_any_unet_work(case, toy_grounder):
    image = np.asarray(Image.open(NIH_MINI / "images" / "00000072_000.png"))
    before = dict(toy_grounder.unet_evaluations)
    with pytest.raises(PhraseError):
        toy_grounder.ground(image, ["cardiomegaly", BAD_PHRASES[case]])
    assert toy_grounder.unet_evaluations == before


def test_phrases_without_ascii_letters_get_distinct_outputs(sandbox, capsys):
    phrases = ["..", "~", "胸水", "🫁", "effusion", "Effusion", "effusion " * 12]
    out = sandbox / "out"
    before = snapshot(sandbox, out)
    code, stdout, err = run_cli(["ground", sandbox / "inputs" / "phantom.png", *phrases, "--model",
                                 sandbox / "inputs" / "toy", "--out", out], capsys)
    assert code == 0, err
    written = {p.stem for p in out.glob("*.json")}
    assert len(written) == len(phrases)  # seven phrases, seven file sets
    assert {json.loads((out / f"{s}.json").read_text())["phrase"] for s in written} == set(phrases)
    assert all(f"-> {out / name}" in stdout for name in written)
    assert snapshot(sandbox, out) == before


# --- model directories ------------------------------------------------------------------------------------------
def _edit_spec(folder: Path, change: Callable[[dict], None]) -> None:
    spec = json.loads((folder / "model.json").read_text())
    change(spec)
    (folder / "model.json").write_text(json.dumps(spec))


def _set(path: list, value) -> Callable[[dict], None]:
    def change(spec: dict) -> None:
        target = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _nan_weight(folder: Path) -> None:
    state = load_file(str(folder / "unet.safetensors"))
    key = sorted(state)[5]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(folder / "unet.safetensors"))


def _inf_text_weight(folder: Path) -> None:
    path = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(path))
    key = sorted(state)[0]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("inf")
    save_file(state, str(path), metadata={"format": "pt"})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


BAD_MODELS: dict[str, tuple[Callable[[Path], None], type, str]] = {
    "empty-json": (lambda f: (f / "model.json").write_text(""), ModelLoadError, "not readable JSON"),
    "json-list": (lambda f: (f / "model.json").write_text("[]"), ModelLoadError, "JSON object"),
    "wrong-format": (lambda f: _edit_spec(f, _set(["format"], "other/9")), ModelLoadError, "format"),
    "no-family": (lambda f: _edit_spec(f, lambda s: s.pop("family")), ModelLoadError, "family"),
    "unknown-family": (lambda f: _edit_spec(f, _set(["family"], "jax-ldm")), ModelLoadError, "unknown model family"),
    "image-size-zero": (lambda f: _edit_spec(f, _set(["image_size"], 0)), ModelLoadError, "image_size"),
    "image-size-string": (lambda f: _edit_spec(f, _set(["image_size"], "64")), ModelLoadError, "image_size"),
    "image-size-odd": (lambda f: _edit_spec(f, _set(["image_size"], 63)), ModelLoadError, "multiple"),
    "image-size-hours": (lambda f: _edit_spec(f, _set(["image_size"], 4096)), ModelLoadError, "hours"),
    "latent-scale-zero": (lambda f: _edit_spec(f, _set(["latent_scale"], 0)), ModelLoadError, "latent_scale"),
    "latent-scale-nan": (lambda f: (f / "model.json").write_text(
        (f / "model.json").read_text().replace('"latent_scale": 1.0', '"latent_scale": NaN')), ModelLoadError,
        "latent_scale"),
    "beta-above-one": (lambda f: _edit_spec(f, _set(["noise_schedule", "beta_end"], 1.5)), ModelLoadError,
                       "beta_end"),
    "beta-negative": (lambda f: _edit_spec(f, _set(["noise_schedule", "beta_start"], -0.1)), ModelLoadError,
                      "beta_start"),
    "prediction-type": (lambda f: _edit_spec(f, _set(["noise_schedule", "prediction_type"], "x0")),
                        ModelLoadError, "prediction_type"),
    "schedule-unknown-key": (lambda f: _edit_spec(f, _set(["noise_schedule", "eta"], 1)), ModelLoadError,
                             "noise_schedule"),
    "sigma-nan": (lambda f: (f / "model.json").write_text((f / "model.json").read_text().replace(
        '"gaussian_sigma": 2.0', '"gaussian_sigma": NaN')), ModelLoadError, "gaussian_sigma"),
    "defaults-unknown-key": (lambda f: _edit_spec(f, _set(["grounding_defaults", "threshold"], "none")),
                             ModelLoadError, "may only set"),
    "weights-escape": (lambda f: _edit_spec(f, _set(["unet", "weights"], "../../unet.safetensors")),
                       ModelLoadError, "leaves the model directory"),
    "weights-absolute": (lambda f: _edit_spec(f, _set(["unet", "weights"], "/etc/passwd")), ModelLoadError,
                         "leaves the model directory"),
    "weights-missing": (lambda f: (f / "unet.safetensors").unlink(), WeightsNotFoundError, "unet.safetensors"),
    "weights-nan": (_nan_weight, ModelLoadError, "NaN or infinite"),
    "text-weights-inf": (_inf_text_weight, ModelLoadError, "NaN or infinite"),
    "weights-corrupt": (lambda f: _truncate(f / "unet.safetensors"), ModelLoadError,
                        "not a readable safetensors file"),
    "args-misfit": (lambda f: _edit_spec(f, _set(["unet", "args", "channels"], [32, 64, 128])), ModelLoadError,
                    "does not"),
    "args-unknown": (lambda f: _edit_spec(f, _set(["unet", "args", "wings"], 2)), ModelLoadError, "cannot be built"),
    "args-not-object": (lambda f: _edit_spec(f, _set(["unet", "args"], [1, 2])), ModelLoadError, "'args'"),
    "class-unknown": (lambda f: _edit_spec(f, _set(["unet", "class"], "os.system")), ModelLoadError,
                      "unknown network class"),
    "text-folder-missing": (lambda f: shutil.rmtree(f / "text_encoder"), ModelLoadError,
                            "cannot load text_encoder from"),
    "text-source-escape": (lambda f: _edit_spec(f, _set(["text_encoder", "source", "path"], "../..")),
                           ModelLoadError, "leaves the model directory"),
    "text-class-unknown": (lambda f: _edit_spec(f, _set(["text_encoder", "class"], "transformers.T5EncoderModel")),
                           ModelLoadError, "unsupported class"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_directories_are_refused_at_load(case, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(KNOWN_MODELS["toy"], folder)
    damage, error, message = BAD_MODELS[case]
    damage(folder)
    with pytest.raises(error, match=message):
        load_model(folder)


@pytest.mark.parametrize("device", ["gpu7", "cuda:banana", "tpu", "cuda", "mps"])
def test_unknown_or_absent_devices(device):
    if (device == "cuda" and torch.cuda.is_available()) or (device == "mps" and torch.backends.mps.is_available()):
        pytest.skip(f"this machine has {device}")
    with pytest.raises(ModelLoadError, match="device"):
        load_model("toy", device=device)


def test_a_model_path_that_is_no_model(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=str(tmp_path / "absent")):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no model.json"):
        load_model(tmp_path / "empty")


# --- settings ---------------------------------------------------------------------------------------------------------
BAD_SETTINGS = {
    "unknown-key": ({"sigma": 2}, "unknown settings"),
    "steps-zero": ({"inference_steps": 0}, "inference_steps"),
    "steps-text": ({"inference_steps": "many"}, "inference_steps"),
    "steps-bool": ({"inference_steps": True}, "inference_steps"),
    "layers-absent": ({"cross_attention_layers": ["down_blocks.9.attn2"]}, "not cross-attention layers"),
    "layers-string": ({"cross_attention_layers": "up_blocks.1"}, "list of module paths"),
    "window-past-grid": ({"window_start": 90, "window_stop": 120}, "runs past"),
    "window-empty": ({"window_start": 30, "window_stop": 30}, "empty"),
    "sigma-negative": ({"gaussian_sigma": -1}, "gaussian_sigma"),
    "sigma-nan": ({"gaussian_sigma": float("nan")}, "gaussian_sigma"),
    "guidance": ({"guidance_scale": 7.5}, "guidance_scale"),
    "threshold": ({"threshold": "kmeans"}, "threshold"),
    "grid-too-fine": ({"inference_steps": 5000}, "inference_steps"),
    "layer-twice": ({"cross_attention_layers": ["down_blocks.1.attentions.0.transformer_blocks.0.attn2"] * 2},
                    "more than once"),
    "upsample-huge": ({"upsample_size": 100_000}, r"upsample_size must be an integer in \[2, 4096\]"),
    "unconditional-prompt-too-long": ({"unconditional_prompt": "effusion " * 60}, "unconditional_prompt has"),
    "layer-weights-word": ({"layer_weights": "by_grid"}, "by_resolution"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_bad_settings_fail_before_any_unet_work(case):
    model = load_model("toy")
    overrides, message = BAD_SETTINGS[case]
    with pytest.raises(ConfigError, match=message):
        Grounder(model, overrides=overrides)


def test_precision_and_batch_size_are_checked():
    model = load_model("toy")
    with pytest.raises(ConfigError, match="CUDA"):
        Grounder(model, precision="bf16")
    with pytest.raises(ConfigError, match="precision"):
        Grounder(model, precision="fp8")
    with pytest.raises(ConfigError, match="batch_size"):
        Grounder(model, batch_size=0)


# --- dataset files ---------------------------------------------------------------------------------------------
MS_HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height"
GOOD_ROW = "d1,Pneumonia,left lower lobe pneumonia,img/a.png,100,120,60,50,512,512"


def _ms_cxr(folder: Path, rows: list[str], header: str = MS_HEADER, encoding: str = "utf-8") -> Path:
    (folder / "img").mkdir(exist_ok=True)
    shutil.copy(NIH_MINI / "images" / "00000072_000.png", folder / "img" / "a.png")
    (folder / "ms.csv").write_bytes(("\n".join([header, *rows]) + "\n").encode(encoding))
    return folder / "ms.csv"


BAD_CSVS = {
    "nan-coordinate": ([GOOD_ROW.replace(",100,", ",nan,")], "row 2: x='nan'"),
    "text-coordinate": ([GOOD_ROW, GOOD_ROW.replace(",50,", ",fifty,")], "row 3: h='fifty'"),
    "negative-width": ([GOOD_ROW.replace(",60,", ",-60,")], "row 2: .*positive width"),
    "size-mismatch": ([GOOD_ROW.replace(",512,512", ",1024,1024")], "row 2: the dataset says 1024x1024"),
    "missing-image": ([GOOD_ROW.replace("img/a.png", "img/b.png")], "row 2: image file not found"),
    "escaping-path": ([GOOD_ROW.replace("img/a.png", "../outside.png")], "row 2: .*leaves the dataset root"),
    "absolute-path": ([GOOD_ROW.replace("img/a.png", "/etc/hostname")], "row 2: .*relative"),
    "short-row": (["d1,Pneumonia,pneumonia,img/a.png,1,2"], "row 2: has"),
    "empty-phrase": ([GOOD_ROW.replace("left lower lobe pneumonia", " ")], "row 2: empty"),
    "same-phrase-other-class": ([GOOD_ROW, GOOD_ROW.replace("Pneumonia", "Consolidation").replace(",100,", ",10,")],
                                "row 3 \\('Consolidation'\\) and .*row 2 \\('Pneumonia'\\).*different classes"),
    "size-disagrees-between-rows": ([GOOD_ROW, GOOD_ROW.replace("pneumonia,", "consolidation,", 1)
                                     .replace(",512,512", ",512,600")], "row 3: image size"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_bad_dataset_rows_are_named(case, tmp_path):
    rows, message = BAD_CSVS[case]
    csv = _ms_cxr(tmp_path, rows)
    with pytest.raises(DatasetError, match=message):
        load_dataset("csv", tmp_path, csv)


def test_dataset_file_level_problems(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("csv", tmp_path, tmp_path / "absent.csv")
    with pytest.raises(DatasetError, match="lacks columns"):
        load_dataset("csv", tmp_path, _ms_cxr(tmp_path, [GOOD_ROW], header="a,b,c"))
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset("csv", tmp_path, _ms_cxr(tmp_path, [GOOD_ROW.replace("left", "l\xe9ft")], encoding="latin-1"))
    with pytest.raises(DatasetError, match="root not found"):
        load_dataset("nih", tmp_path / "absent")


def test_duplicate_rows_are_dropped_and_reported(tmp_path):
    load = load_dataset("csv", tmp_path, _ms_cxr(tmp_path, [GOOD_ROW, GOOD_ROW]))
    assert len(load.samples) == 1 and load.samples[0].boxes == ((100.0, 120.0, 60.0, 50.0),)
    assert len(load.notes) == 1 and "row 3" in load.notes[0] and "duplicate" in load.notes[0]


def test_labels_that_read_as_one_phrase_on_one_image_collide_loudly(tmp_path):
    shutil.copytree(NIH_MINI / "images", tmp_path / "images")
    rows = ["Image Index,Finding Label,Bbox [x,y,w,h],,,", "00000072_000.png,Effusion,10,10,50,50",
            "00000072_000.png,Pleural Effusion,100,100,50,50"]
    (tmp_path / "BBox_List_2017.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match="row 3 .*'Pleural Effusion'.*row 2 .*'Effusion'.*same phrase"):
        load_dataset("nih", tmp_path)


# --- run folders -----------------------------------------------------------------------------------------------
def _centre_run(out: Path, capsys, *extra) -> tuple[int, str]:
    code, _, err = run_cli(["eval", "--dataset", "nih", "--root", NIH_MINI, "--method", "centre", "--out", out,
                            *extra], capsys)
    return code, err


def test_out_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, capsys):
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    code, err = _centre_run(tmp_path / "link", capsys)
    assert code == 2 and "symbolic link" in err and not any((tmp_path / "target").iterdir())


def test_a_samples_file_that_is_a_symlink_is_refused(tmp_path, capsys):
    assert _centre_run(tmp_path / "run", capsys)[0] == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "run" / "samples.jsonl").unlink()
    (tmp_path / "run" / "samples.jsonl").symlink_to(victim)
    code, err = _centre_run(tmp_path / "run", capsys, "--resume")
    assert code == 2 and "symbolic link" in err and victim.read_text() == "keep me\n"


def test_a_corrupt_middle_line_is_an_error_and_nothing_is_cut(tmp_path, capsys):
    assert _centre_run(tmp_path / "run", capsys)[0] == 0
    samples = tmp_path / "run" / "samples.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    lines[4] = '{"id": "broken\n'
    samples.write_text("".join(lines))
    before = samples.read_bytes()
    code, _, err = run_cli(["compare", tmp_path / "run", tmp_path / "run"], capsys)
    assert code == 2 and "line 5 is corrupt" in err and samples.read_bytes() == before
    code, err = _centre_run(tmp_path / "run", capsys, "--resume")
    assert code == 2 and "line 5 is corrupt" in err and samples.read_bytes() == before


def test_a_torn_last_line_is_read_past_by_readers_and_cut_only_by_the_writer(tmp_path, capsys):
    assert _centre_run(tmp_path / "run", capsys)[0] == 0
    samples = tmp_path / "run" / "samples.jsonl"
    whole = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(whole[:-1]) + whole[-1][:25])
    torn = samples.read_bytes()
    code, stdout, _ = run_cli(["compare", tmp_path / "run", tmp_path / "run"], capsys)
    assert code == 0 and "Compared on the 12 samples" in stdout and samples.read_bytes() == torn
    assert _centre_run(tmp_path / "run", capsys, "--resume")[0] == 0
    resumed = samples.read_text().splitlines(keepends=True)
    assert resumed[:-1] == whole[:-1] and len(resumed) == len(whole)  # only the torn line was redone
    assert json.loads(resumed[-1])["id"] == json.loads(whole[-1])["id"]


def test_duplicate_records_are_an_error(tmp_path, capsys):
    assert _centre_run(tmp_path / "run", capsys)[0] == 0
    samples = tmp_path / "run" / "samples.jsonl"
    first = samples.read_text().splitlines(keepends=True)[0]
    samples.write_text(samples.read_text() + first)
    code, _, err = run_cli(["compare", tmp_path / "run"], capsys)
    assert code == 2 and "twice" in err


def test_one_writer_per_run_folder(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run holds the folder
        code, err = _centre_run(tmp_path / "run", capsys)
    assert code == 2 and "another medground run is writing" in err
    assert not (tmp_path / "run" / "samples.jsonl").exists()


def test_reruns_and_changed_settings(tmp_path, capsys):
    assert _centre_run(tmp_path / "run", capsys)[0] == 0
    code, err = _centre_run(tmp_path / "run", capsys)
    assert code == 2 and "--resume" in err
    code, err = _centre_run(tmp_path / "run", capsys, "--resume", "--limit", "3")
    assert code == 2 and "settings differ" in err and "limit" in err


def test_compare_on_missing_or_broken_runs(tmp_path, capsys):
    code, _, err = run_cli(["compare", tmp_path / "absent"], capsys)
    assert code == 2 and "no run.json" in err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{oops")
    code, _, err = run_cli(["compare", tmp_path / "broken"], capsys)
    assert code == 2 and "not readable JSON" in err


def test_unwritable_out_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = _centre_run(blocker / "run", capsys)
    assert code == 2 and "cannot write to" in err
    code, _, err = run_cli(["ground", NIH_MINI / "images" / "00000072_000.png", "effusion", "--out",
                            blocker / "out"], capsys)
    assert code == 2 and "cannot write to" in err


def test_ground_refuses_to_write_through_a_symlinked_output(sandbox, capsys):
    from medground.outputs import output_name

    out = sandbox / "out"
    out.mkdir()
    victim = sandbox / "inputs" / "victim.npy"
    victim.write_bytes(b"keep")
    image = sandbox / "inputs" / "phantom.png"
    model = sandbox / "inputs" / "toy"
    settings = json.dumps({"model": str(model), "config": Grounder(load_model(model)).config.to_dict()},
                          sort_keys=True)
    (out / (output_name(image, "effusion", settings) + ".npy")).symlink_to(victim)
    before = snapshot(sandbox, out)
    code, _, err = run_cli(["ground", image, "effusion", "--model", model, "--out", out], capsys)
    assert code == 2 and "symbolic link" in err and snapshot(sandbox, out) == before


# --- command-line flags -----------------------------------------------------------------------------------------------
BAD_FLAGS = {
    "limit-zero": (["eval", "--dataset", "nih", "--root", NIH_MINI, "--method", "centre", "--limit", "0"],
                   "integer >= 1"),
    "limit-negative": (["eval", "--dataset", "nih", "--root", NIH_MINI, "--method", "centre", "--limit", "-1"],
                       "integer >= 1"),
    "no-root": (["eval", "--dataset", "nih", "--method", "centre"], "needs --root"),
    "unknown-method": (["eval", "--dataset", "nih", "--root", NIH_MINI, "--method", "magic"], "invalid choice"),
    "unknown-preset": (["ground", "IMG", "effusion", "--preset", "best"], "invalid choice"),
    "no-phrase": (["ground", "IMG"], "required"),
    "bad-device": (["ground", "IMG", "effusion", "--device", "gpu7"], "unknown device"),
    "bf16-on-cpu": (["ground", "IMG", "effusion", "--precision", "bf16"], "needs a CUDA device"),
    "set-without-equals": (["ground", "IMG", "effusion", "--set", "gaussian_sigma"], "key=value"),
    "set-unknown": (["ground", "IMG", "effusion", "--set", "colour=red"], "unknown settings"),
    "config-not-json": (["ground", "IMG", "effusion", "--config", "BROKEN"], "cannot read settings"),
    "config-list": (["ground", "IMG", "effusion", "--config", "LIST"], "JSON object"),
    "toy-n-zero": (["toy", "eval", "--seed", "9000000", "--n", "0"], "integer >= 1"),
    "empty-dataset": (["eval", "--dataset", "csv", "--root", "EMPTYROOT", "--csv", "EMPTYCSV", "--method",
                       "centre"], "no sample"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags_are_one_clear_line(case, sandbox, capsys):
    argv, message = BAD_FLAGS[case]
    (sandbox / "inputs" / "broken.json").write_text("{")
    (sandbox / "inputs" / "list.json").write_text("[1, 2]")
    (sandbox / "inputs" / "empty.csv").write_text(MS_HEADER + "\n")
    names = {"IMG": sandbox / "inputs" / "phantom.png", "BROKEN": sandbox / "inputs" / "broken.json",
             "LIST": sandbox / "inputs" / "list.json", "EMPTYCSV": sandbox / "inputs" / "empty.csv",
             "EMPTYROOT": sandbox / "inputs"}
    argv = [names.get(str(a), a) for a in argv]
    if argv[0] in ("ground", "eval"):
        argv += ["--out", sandbox / "out"]
    before = snapshot(sandbox, sandbox / "out")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and re.search(message, err), err
    assert "Traceback" not in err
    assert snapshot(sandbox, sandbox / "out") == before


def test_every_error_class_is_a_medground_error():
    for error in (ConfigError, DatasetError, ImageError, ModelLoadError, PhraseError, RunDirError,
                  WeightsNotFoundError):
        assert issubclass(error, MedgroundError)


def test_help_loads_no_torch():
    import subprocess
    import sys

    code = "import sys; from medground.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.stdout.strip() == "False"



# --- the second adversarial pass (260 inputs after the hardening): its 20 findings, by mechanism ---------------------
def test_the_api_takes_a_model_name_and_refuses_what_is_no_model_or_no_phrase_list():
    grounder = Grounder("toy", "fast")
    assert type(grounder.model.unet).__name__ == "DiffusionModelUNet"
    with pytest.raises(ModelLoadError, match="known name"):
        load_model(None)
    with pytest.raises(PhraseError, match="a string or a list of strings"):
        grounder.ground(NIH_MINI / "images" / "00000072_000.png", None)
    assert grounder.unet_evaluations == {"unconditional": 0, "conditional": 0}


def test_a_model_folder_without_its_tokenizer_names_the_folder(tmp_path):
    shutil.copytree(KNOWN_MODELS["toy"], tmp_path / "toy")
    shutil.rmtree(tmp_path / "toy" / "tokenizer")
    with pytest.raises(WeightsNotFoundError, match=f"no tokenizer in {tmp_path / 'toy'}"):
        load_model(tmp_path / "toy")


def test_flags_of_another_kind_of_dataset_are_refused_not_ignored(tmp_path, capsys):
    code, err = _centre_run(tmp_path / "a", capsys, "--n", "2")
    assert code == 2 and "--seed and --n are for --dataset phantoms" in err and "--limit" in err
    code, _, err = run_cli(["eval", "--dataset", "phantoms", "--root", NIH_MINI, "--method", "centre", "--out",
                            tmp_path / "b"], capsys)
    assert code == 2 and "--root and --csv are for file datasets" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_grid_key_given_twice_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(["sweep", "--grid", "threshold=otsu", "--grid", "threshold=gmm", "--n", "2", "--out",
                            tmp_path / "s"], capsys)
    assert code == 2 and "--grid threshold is given twice" in err and not (tmp_path / "s").exists()


def test_compare_refuses_runs_scored_against_different_boxes(tmp_path, capsys):
    shutil.copytree(NIH_MINI, tmp_path / "nih")
    table = tmp_path / "nih" / "BBox_List_2017.csv"
    assert _centre_run(tmp_path / "first", capsys, "--limit", "2")[0] == 0
    lines = table.read_text().splitlines()
    first = lines[1].split(",")
    first[4] = str(float(first[4]) + 40)  # a wider box for the first sample, same image and class
    table.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    code, _, _ = run_cli(["eval", "--dataset", "nih", "--root", tmp_path / "nih", "--method", "centre", "--limit",
                          "2", "--out", tmp_path / "second"], capsys)
    assert code == 0
    code, _, err = run_cli(["compare", tmp_path / "first", tmp_path / "second"], capsys)
    assert code == 2 and "different ground truth" in err


def test_compare_names_a_run_written_before_ground_truth_was_recorded(tmp_path, capsys):
    """Records without the ground-truth digest (an older medground's) are named as such, not as other boxes."""
    for name in ("old", "new"):
        assert _centre_run(tmp_path / name, capsys, "--limit", "2")[0] == 0
    samples = tmp_path / "old" / "samples.jsonl"
    records = [json.loads(line) for line in samples.read_text().splitlines()]
    samples.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "truth"}) + "\n" for r in records))
    code, _, err = run_cli(["compare", tmp_path / "new", tmp_path / "old"], capsys)
    assert code == 2 and "lack ['truth']" in err and "(older) medground" in err and str(tmp_path / "old") in err


def test_toy_eval_on_training_seeds_says_it_is_not_held_out(capsys):
    code, out, err = run_cli(["toy", "eval", "--seed", "10", "--n", "2", "--methods", "uniform"], capsys)
    assert code == 0 and "overlap the training seeds" in err and "| uniform |" in out


def test_ground_with_other_settings_writes_other_files(sandbox, capsys):
    out = sandbox / "out"
    image = sandbox / "inputs" / "phantom.png"
    for sigma in ("1", "3"):
        code, _, _ = run_cli(["ground", image, "effusion", "--model", sandbox / "inputs" / "toy", "--preset", "fast",
                              "--set", f"gaussian_sigma={sigma}", "--out", out], capsys)
        assert code == 0
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert sorted(r["config"]["gaussian_sigma"] for r in records) == [1, 3]


def test_a_csv_with_a_byte_order_mark_reads(tmp_path):
    csv = _ms_cxr(tmp_path, [GOOD_ROW], encoding="utf-8-sig")
    assert csv.read_bytes().startswith(b"\xef\xbb\xbf")
    assert len(load_dataset("csv", tmp_path, csv).samples) == 1


def test_an_image_that_cannot_be_opened_is_an_image_error(tmp_path, monkeypatch):
    """A file without read permission (or an I/O error) becomes an ImageError, so batch writes an error row."""
    path = phantom_png(tmp_path / "locked.png").rename(tmp_path / "locked")  # no suffix: the DICOM sniff opens it
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ImageError, match="cannot read .*Permission denied"):
        read_image(path)


def test_layer_weights_follow_the_layer_names_not_the_order_layers_run_in():
    """diffusers lists up_blocks before mid_block, but the UNet runs mid first: weights are matched by path."""
    model = load_model("toy-sd")
    layers = model.attention_layers()
    sides = model.attention_grid_sides()
    weights = [3.0 if sides[path] == max(sides.values()) else 1.0 for path in layers]
    base = {"inference_steps": 40, "window_start": 8, "window_stop": 12, "gaussian_sigma": 0.0, "threshold": "none"}
    image = NIH_MINI / "images" / "00000072_000.png"
    listed = Grounder(model, overrides={**base, "cross_attention_layers": layers, "layer_weights": weights})
    reversed_ = Grounder(model, overrides={**base, "cross_attention_layers": layers[::-1],
                                           "layer_weights": weights[::-1]})
    by_resolution = Grounder(model, overrides={**base, "cross_attention_layers": layers[::-1],
                                               "layer_weights": "by_resolution"})
    maps = [g.ground(image, "pleural effusion")[0].model_heatmap for g in (listed, reversed_, by_resolution)]
    assert np.abs(maps[0] - maps[1]).max() <= 1e-6
    plain = Grounder(model, overrides={**base, "cross_attention_layers": layers}).ground(image, "pleural effusion")[0]
    assert np.abs(maps[0] - plain.model_heatmap).max() > 1e-3  # the weights matter, so the first check can fail
    assert by_resolution.config.layer_weights == tuple(sides[p] / 8 for p in layers[::-1])
