"""``medground batch``: manifests, the plan, the Parquet output, error rows, a killed run resumed, and the batched
engine against batch one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from manifests import FAST_TOY, phantom_rows, read_output, toy_job, write_manifest

from medground import Grounder, load_model
from medground.batch.manifest import Manifest
from medground.batch.runner import run_batch
from medground.batch.store import read_done_units
from medground.batch.work import compact_map
from medground.cli import main
from medground.errors import DatasetError, RunDirError

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms")
    rows = phantom_rows(folder, 8_300_000, 8)
    return folder, rows, write_manifest(folder / "manifest.jsonl", rows)


@pytest.fixture(scope="module")
def uninterrupted(phantoms, tmp_path_factory):
    _, _, manifest = phantoms
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    summary = run_batch(Manifest.open(manifest), out, toy_job(), overrides=FAST_TOY, images_per_unit=3, progress=False)
    return out, summary


def test_manifest_formats_give_the_same_plan(tmp_path):
    rows = [{"id": 5, "image": "a.png", "phrases": ["x", "y"]}, {"id": 7, "image": "b.png", "phrases": ["z"]},
            {"id": 9, "image": "a.png", "phrases": ["w"]}]
    plans = [list(Manifest.open(write_manifest(tmp_path / f"m{suffix}", rows)).units(2, 100))
             for suffix in (".csv", ".jsonl", ".parquet")]
    assert plans[0] == plans[1] == plans[2] and len(plans[0]) == 1
    (unit,) = plans[0]
    assert [image.path for image in unit.images] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert [(q.row, q.phrase_index, q.id, q.phrase) for q in unit.images[0].queries] == \
        [(0, 0, "5", "x"), (0, 1, "5", "y"), (2, 0, "9", "w")]
    assert unit.images[1].queries[0].id == "7"
    for suffix in (".csv", ".jsonl"):  # saved with a byte-order mark (Excel's "CSV UTF-8"): the same plan
        marked = tmp_path / f"bom{suffix}"
        marked.write_bytes(b"\xef\xbb\xbf" + (tmp_path / f"m{suffix}").read_bytes())
        assert list(Manifest.open(marked).units(2, 100)) == plans[0]
    windows = list(Manifest.open(tmp_path / "m.csv").units(images_per_unit=8, window_rows=2))
    assert [[image.path for image in u.images] for u in windows] == [[str(tmp_path / "a.png"), str(tmp_path / "b.png")],
                                                                     [str(tmp_path / "a.png")]]


@pytest.mark.parametrize("text, message", [
    ("image,phrase\n,effusion\n", "row 0 .*image must be a non-empty path"),
    ("image,phrase\na.png,  \n", "every phrase must be non-empty"),
    ("image,label\na.png,x\n", "exactly one of the columns"),
    ("image,phrase,phrases\na.png,x,y\n", "exactly one of the columns"),
    ("image,phrase\na.png,x,extra\n", "different number of fields"),
    ("image,phrase\nmissing.png,effusion\n", r"1 image file\(s\) .* not found, e.g. row 0: .*missing.png"),
])
def test_bad_manifests_fail_before_any_work(tmp_path, capsys, text, message):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=message):
        Manifest.open(path).survey(16, 100)
    assert main(["batch", str(path), "--out", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_batch_grounds_every_row_once_as_the_grounder_does(phantoms, uninterrupted):
    folder, rows, _ = phantoms
    out, summary = uninterrupted
    written = read_output(out)
    assert set(written) == {(i, k) for i, row in enumerate(rows) for k in range(len(row["phrases"]))}
    assert summary.rows == summary.computed == len(written) and summary.errors == 0
    assert {r["id"] for r in written.values()} == {r["id"] for r in rows}
    # The first unit holds the first three images; the Grounder, asked the same way, gives the same numbers.
    grounder = Grounder(load_model("toy"), "paper", overrides=FAST_TOY, batch_size=2, cache_size=0)
    results = grounder.ground_many([(folder / row["image"], row["phrases"]) for row in rows[:3]])
    for number, image_results in enumerate(results):
        for k, result in enumerate(image_results):
            row = written[number, k]
            assert (row["unit"], row["phrase"], row["width"], row["height"]) == (0, result.phrase, 64, 64)
            assert np.array_equal(np.asarray(row["map"], dtype=np.float32), compact_map(result.model_heatmap, 32,
                                                                                     "float32"))
            assert [(b["x"], b["y"], b["w"], b["h"]) for b in row["boxes"]] == \
                [(b.x, b.y, b.w, b.h) for b in result.boxes]
            assert np.allclose([b["score"] for b in row["boxes"]], [b.score for b in result.boxes], atol=1e-6)
            assert row["mask_area"] == int(result.mask.sum()) > 0 and row["error"] is None
    block = compact_map(np.arange(16, dtype=np.float32).reshape(4, 4), 2, "float16")
    assert block.dtype == np.float16 and block.tolist() == [2.5, 4.5, 10.5, 12.5]


def test_batch_killed_mid_run_resumes_without_losing_or_repeating_a_row(phantoms, uninterrupted, tmp_path):
    """SIGKILL while parts are being written, a torn temporary part left behind, then --resume: the rows equal an
    uninterrupted run's, each once."""
    _, rows, manifest = phantoms
    out = tmp_path / "out"
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              f"import torch; torch.set_num_threads({torch.get_num_threads()})  # the same sums as this process\n"
              "from pathlib import Path\n"
              "from manifests import FAST_TOY, toy_job\n"
              "from medground.batch.manifest import Manifest\n"
              "from medground.batch.runner import run_batch\n"
              f"run_batch(Manifest.open(Path({str(manifest)!r})), Path({str(out)!r}), toy_job(), overrides=FAST_TOY, "
              "images_per_unit=3, part_rows=1, progress=False)\n")
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 240
    while not list((out / "parts").glob("part-*.parquet")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    before = read_done_units(out / "parts")
    assert 1 <= len(before) < 3
    (out / "parts" / ".part-000000002.tmp").write_bytes(b"PAR1 torn by the kill")
    with pytest.raises(RunDirError, match="--resume"):
        run_batch(Manifest.open(manifest), out, toy_job(), overrides=FAST_TOY, images_per_unit=3, progress=False)
    summary = run_batch(Manifest.open(manifest), out, toy_job(), overrides=FAST_TOY,
                        images_per_unit=3, resume=True, progress=False)
    assert summary.computed == summary.rows - sum(before.values())
    sessions = json.loads((out / "run.json").read_text())["sessions"]  # how each part was made, run by run
    assert [s["rows_before"] for s in sessions] == [0, sum(before.values())]
    assert all(s["engine"] == "local" and s["device"] == "cpu" for s in sessions)
    assert not list((out / "parts").glob(".part-*"))
    resumed, whole = read_output(out), read_output(uninterrupted[0])
    assert set(resumed) == set(whole)
    for key, row in whole.items():
        assert {k: v for k, v in resumed[key].items() if not k.endswith("_s")} == \
            {k: v for k, v in row.items() if not k.endswith("_s")}
    with pytest.raises(RunDirError, match="settings differ"):
        run_batch(Manifest.open(manifest), out, toy_job(map_side=16), overrides=FAST_TOY,
                  images_per_unit=3, resume=True, progress=False)


def test_unreadable_parts_are_reported_not_deleted(tmp_path):
    (tmp_path / "part-000000005.parquet").write_bytes(b"not parquet")
    with pytest.raises(RunDirError, match="not readable Parquet"):
        read_done_units(tmp_path)
    assert (tmp_path / "part-000000005.parquet").exists()


def test_batch_command_on_nih_images_with_error_rows(nih_root, tmp_path, capsys):
    """Real radiographs through the command line; an unreadable image and a phrase the text encoder refuses become
    error rows and the run goes on; pandas reads the result."""
    import pandas as pd

    (tmp_path / "broken.png").write_bytes(b"not an image")
    images = sorted((nih_root / "images").glob("*.png"))[:2]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,phrase\n" + f"{images[0]},pleural effusion\n{tmp_path / 'broken.png'},lung nodule\n"
                        f"{images[1]},cardiomegaly\n{images[0]},{'effusion ' * 80}\n")
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "--out", str(out), "--set", "inference_steps=40", "--set", "window_start=4",
                 "--set", "window_stop=16", "--map-side", "16"]) == 0
    assert "4 rows in" in capsys.readouterr().out
    table = pd.read_parquet(out / "parts").sort_values("row")
    assert table["row"].tolist() == [0, 1, 2, 3]
    errors = table["error"].tolist()
    assert pd.isna(errors[0]) and pd.isna(errors[2])
    assert "cannot read" in errors[1] and "tokens" in errors[3]
    assert table["width"].tolist()[0] == 512 and len(table["map"].iloc[0]) == 16 * 16
    assert table["boxes"].iloc[2].size > 0
    assert main(["batch", str(manifest), "--out", str(out), "--resume"]) == 2  # another recipe: refused
    assert "settings differ" in capsys.readouterr().err


def test_batched_inversion_and_conditional_passes_equal_batch_one(tiny_model_dir, odd_images, nih_root):
    """Several images per inversion batch and several window steps per conditional pass (fp32) give the maps of
    one image and one step per pass, to 1e-5."""
    model = load_model(tiny_model_dir)
    phrases = ["small left pleural effusion", "moderate cardiomegaly"]
    items = [(odd_images["portrait"], phrases), (odd_images["landscape"], phrases[:1]),
             (nih_root / "images" / "00000457_004.png", phrases)]
    settings = {"inference_steps": 100}
    one = Grounder(model, "paper", overrides=settings, batch_size=1).ground_many(items)
    batched_grounder = Grounder(model, "paper", overrides=settings, batch_size=16)
    batched = batched_grounder.ground_many(items)
    assert batched_grounder.unet_evaluations == {"unconditional": 3 * 59, "conditional": 5 * 20}
    for single, many in zip(one, batched):
        for a, b in zip(single, many):
            assert a.phrase == b.phrase
            assert np.abs(a.model_heatmap - b.model_heatmap).max() <= 1e-5
            assert (a.model_heatmap > 0).mean() > 0.05


def test_compiled_inversion_gives_the_eager_maps(nih_root):
    """``compile=True`` runs the inversion through inductor with frozen weights: the maps equal the eager engine's to
    1e-5 (on the CPU freezing also prepacks convolutions for oneDNN, a different summation order)."""
    model = load_model("toy")
    image = nih_root / "images" / "00000457_004.png"
    phrases = ["left pleural effusion", "cardiomegaly"]
    eager = Grounder(model, "fast").ground(image, phrases)
    compiled = Grounder(model, "fast", compile=True).ground(image, phrases)
    assert model.compiled() is model.compiled() and model.compiled().unet is not model.unet
    for a, b in zip(eager, compiled):
        assert np.abs(a.model_heatmap - b.model_heatmap).max() <= 1e-5 and (a.model_heatmap > 0).mean() > 0.05
