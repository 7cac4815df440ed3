"""Reliability of the newer surfaces (issue 19): every case of the issue's adversarial pass ends in a clear error (a
MedgroundError in the API; on the command line exit status 2 and one ``medground: error: ...`` line, no traceback)
or in a correct result, with no hang and no partial file left behind.

Each case of the issue and the tests that cover it (``::name`` in this file, ``file::name`` in another):

 1. ``report --report -`` with Latin-1, binary (and empty) stdin; closed stdin:
    ::test_report_from_stdin_that_is_not_utf8_names_the_byte, ::test_report_from_closed_stdin_is_one_line
 2. A report file with a UTF-8 byte-order mark, its INDICATION not grounded: ::test_report_file_with_a_byte_order_mark
 3. Latin-1 and binary CSV manifests for ``batch``: ::test_manifest_that_is_not_utf8_names_file_and_offset
 4. JSON nested 100,000 deep in a JSONL manifest, a ``model.json``, ``--config`` (and ``--set``, ``--grid``):
    ::test_json_nested_100000_deep_is_refused_naming_the_limit
 5. A report over the size limit: ::test_report_file_over_the_size_limit_names_limit_and_variable;
    the variable raising the limit: test_report_reader.py::test_report_size_limit_is_named_and_can_be_raised,
    test_report_reader.py::test_a_million_characters_is_a_report_error_not_spacy_e088
 6. A full disk while ``ground`` and ``report`` write:
    ::test_full_disk_names_folder_and_free_space_and_leaves_no_partial_file
 7. ``report`` twice into one --out with other settings: ::test_report_twice_into_one_folder_keeps_both_runs
 8. 300-character names (image, --out, manifest; also report, settings, dataset root and CSV, run folder), and long
    names that exist: ::test_names_over_the_file_system_limit_are_one_line,
    ::test_long_image_and_folder_names_give_fitted_output_names, ::test_output_names_fit_whatever_the_phrase
 9. ``sweep`` and ``toy eval`` over the confirm threshold: ::test_sweep_over_the_threshold_needs_yes,
    ::test_toy_eval_over_the_threshold_needs_yes
10. noise_seed 2**70, num_train_timesteps 1e9, UNet channels 10**6:
    ::test_seed_over_32_bits_is_refused_naming_the_limit, ::test_absurd_model_descriptions_are_refused_before_allocating
11. Ray: a malformed and an unreachable --address, workers beyond the cluster:
    ::test_ray_address_that_is_not_a_cluster_fails_fast,
    ::test_workers_beyond_the_cluster_are_refused_naming_what_it_has
12. Python API: overrides as a list or with non-string keys, cache_size=-1, an empty array, a closed PIL image, a
    lone surrogate (and a zero-width space) in a phrase: ::test_python_api_refuses_bad_arguments_before_any_unet_work
13. Distinct colours for 200 findings: ::test_two_hundred_findings_get_two_hundred_colours
14. EXIF orientation 6 in a PNG and a JPEG: ::test_exif_orientation_is_applied
15. /dev/null (and a FIFO) as an image; a FIFO as a report file: ::test_a_device_as_image_is_not_called_missing,
    ::test_a_pipe_nothing_writes_to_is_refused_not_waited_on, ::test_a_pipe_with_a_writer_still_reads
16. One mention of a report that the text encoder cannot take:
    ::test_an_ungroundable_mention_is_dropped_with_its_reason
17. A DICOM whose header says 10000 x 10000: ::test_huge_dicom_is_refused_from_its_header_before_decoding
18. The app's per-visitor state, ``Session.forget``, eviction beyond ``max_visitors``:
    ::test_app_keeps_a_display_size_picture_and_removes_visitors_files
19. ``Grounder.ground_many(items, reduce)`` keeps no full result alive:
    ::test_ground_many_with_reduce_keeps_no_full_result_alive
20. int8 UNet weights and a pickled ``pytorch_model.bin`` in a model folder:
    ::test_int8_weights_in_a_model_folder_are_refused_naming_the_file,
    ::test_a_pickled_text_encoder_in_a_model_folder_is_refused; in a diffusers pipeline:
    test_import_safety.py::test_int8_weights_are_refused_naming_file_key_and_dtype,
    test_import_safety.py::test_a_text_encoder_pickle_with_code_is_refused_in_medgrounds_words,
    test_import_safety.py::test_a_unet_pickle_with_code_is_refused_in_medgrounds_words.
    ``import-diffusers P --out P``: test_import_safety.py::test_source_as_destination_is_refused_before_writing,
    test_import_safety.py::test_the_cli_reports_the_refusal_without_a_traceback.
    A failed import leaves no partial folder:
    test_import_safety.py::test_a_failed_import_leaves_nothing_and_a_retry_succeeds,
    test_import_safety.py::test_parent_folders_made_for_a_failed_import_are_removed,
    test_import_safety.py::test_a_write_error_is_a_model_load_error_and_leaves_nothing
21. ``sweep --grid threshold=otsu,otsu``: ::test_a_repeated_grid_value_is_refused_before_any_computation
22. A non-breaking space before ':' in a header: test_report_reader.py::test_space_before_the_colon_of_a_header.
    NUL or zero-width characters in a mention:
    test_report_reader.py::test_invisible_character_inside_a_word_does_not_hide_it,
    test_report_reader.py::test_offsets_index_the_original_text_after_removed_characters (in a phrase:
    ::test_python_api_refuses_bad_arguments_before_any_unet_work,
    test_adversarial.py::test_bad_phrases_fail_before_any_unet_work).
    "Pneumothorax?" is uncertain: test_report_reader.py::test_question_marks.
    "Kein Pneumothorax" is refused as not English: test_report_reader.py::test_reports_not_in_english_are_refused

Runs that need the model use the shipped ``toy`` with a 10-step grid and a two-position window (``TINY``).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import write_dicom
from PIL import Image
from safetensors.torch import load_file, save_file
from test_adversarial import phantom_png, run_cli, snapshot

import medground.engine.cost as cost
import medground.text_input as text_input
from medground import Grounder, load_model
from medground.app.session import Session
from medground.batch.work import compact_result
from medground.cluster import check_address, check_workers
from medground.errors import ConfigError, ImageError, MedgroundError, ModelLoadError, PhraseError, ReportError
from medground.images import MAX_PIXELS_ENV, image_size, read_image
from medground.loading import KNOWN_MODELS
from medground.outputs import MAX_NAME_BYTES, NAME_ROOM, output_name
from medground.reports import ground_report
from medground.reports.findings import MAX_REPORT_CHARS, MAX_REPORT_CHARS_ENV, read_report
from medground.results import finding_colour
from medground.viz import DISPLAY_SIDE

TINY_SETTINGS = {"inference_steps": 10, "window_start": 1, "window_stop": 3}
"""A 10-step grid and a two-position window on the toy: every code path, a fraction of a second of UNet work."""
TINY = [arg for key, value in TINY_SETTINGS.items() for arg in ("--set", f"{key}={value}")]
REPORT = "FINDINGS: Small right pleural effusion. Left mid zone nodule."
"""Both findings of phantom seed 2."""


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """Phantom seed 2 (a small right pleural effusion, a left mid zone nodule) as a PNG."""
    return phantom_png(tmp_path_factory.mktemp("image") / "phantom.png", seed=2)


def one_error_line(code: int, err: str) -> str:
    """The message of a command that failed as medground promises: status 2, one line, no traceback (before it,
    stderr may hold progress bars, which end in carriage returns, not lines)."""
    assert code == 2, err
    assert "Traceback" not in err and err.endswith("\n") and err.count("\n") == 1, err
    line = err.rsplit("\r", 1)[-1].lstrip(" ")
    assert line.startswith("medground: error: "), err
    return line.removeprefix("medground: error: ").rstrip("\n")


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- 1. the report from standard input --------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "expected"), [
    ("Small pleural effusion, épanchement.".encode("latin-1"),
     "standard input is not UTF-8 text: byte 0xe9 at offset 24"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "standard input is not UTF-8 text: byte 0x89 at offset 0"),
    (b"", "the report is empty"),
], ids=["latin-1", "binary", "empty"])
def test_report_from_stdin_that_is_not_utf8_names_the_byte(data, expected, image, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = run_cli(["report", image, "--report", "-", "--out", tmp_path / "out"], capsys)
    assert one_error_line(code, err).startswith(expected)
    assert not (tmp_path / "out").exists()  # refused before any output folder or model


def test_report_from_closed_stdin_is_one_line(image, tmp_path):
    """A closed descriptor 0 (``0<&-``), which Python shows as ``sys.stdin is None``, not an empty stream."""
    command = [sys.executable, "-m", "medground.cli", "report", str(image), "--report", "-", "--out",
               str(tmp_path / "out")]
    done = subprocess.run(["bash", "-c", 'exec "$@" 0<&-', "bash", *command], capture_output=True, text=True,
                          timeout=120)
    assert one_error_line(done.returncode, done.stderr) == \
        "cannot read the report from standard input: it is closed"
    assert not (tmp_path / "out").exists()


# --- 2 and 7. a report file with a byte-order mark; a second run into the same folder ---------------------------------
BOM_REPORT = "INDICATION: Pneumonia.\n" + REPORT


@pytest.fixture(scope="module")
def bom_run(image, tmp_path_factory) -> Path:
    """``report`` on a UTF-8 file with a byte-order mark; returns its --out."""
    folder = tmp_path_factory.mktemp("bom")
    path = folder / "report.txt"
    path.write_bytes(b"\xef\xbb\xbf" + BOM_REPORT.encode())
    code = _main(["report", image, "--report", path, *TINY, "--out", folder / "out"])
    assert code == 0
    return folder / "out"


def _main(argv: list) -> int:
    from medground.cli import main

    return main([str(a) for a in argv])


def _report_records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in out.glob("*_report-*.json")}


def test_report_file_with_a_byte_order_mark(bom_run):
    (record,) = _report_records(bom_run).values()
    assert record["report"] == BOM_REPORT  # the mark is not part of the report
    assert [(f["text"], f["status"]) for f in record["findings"]] == \
        [("Small right pleural effusion", "positive"), ("Left mid zone nodule", "positive")]
    assert [(m["text"], m["section"], m["reason"]) for m in record["not_grounded"]] == \
        [("Pneumonia", "indication", "indication section")]


def test_report_twice_into_one_folder_keeps_both_runs(bom_run, image, tmp_path):
    out = Path(shutil.copytree(bom_run, tmp_path / "out"))
    first = snapshot(out)
    report = tmp_path / "report.txt"
    report.write_bytes(b"\xef\xbb\xbf" + BOM_REPORT.encode())
    assert _main(["report", image, "--report", report, *TINY, "--set", "gaussian_sigma=0", "--set", "threshold=none",
                  "--out", out]) == 0
    after = snapshot(out)
    assert {name: after[name] for name in first} == first  # the first run's files, byte for byte
    records = _report_records(out)
    assert len(records) == 2 and len(after) == 2 * len(first)  # json, png and two heatmaps each
    configs = sorted((r["config"]["gaussian_sigma"], r["config"]["threshold"]) for r in records.values())
    assert configs[0] == (0, "none") and configs[1] != configs[0]
    for record in records.values():
        for finding in record["findings"]:
            assert (out / finding["heatmap_file"]).is_file()
    assert len({f["heatmap_file"] for r in records.values() for f in r["findings"]}) == 4


# --- 3. manifests that are not UTF-8 ----------------------------------------------------------------------------------
LATE_ROWS = "image,phrase\n" + "p.png,effusion\n" * 5_000  # 75,013 bytes: past the first 64 KiB block


@pytest.mark.parametrize(("data", "offset", "byte"), [
    ("image,phrase\np.png,épanchement\n".encode("latin-1"), 19, "e9"),
    ((LATE_ROWS + "p.png,épanchement\n").encode("latin-1"), len(LATE_ROWS) + 6, "e9"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 0, "89"),
    (b"image,phrase\n" + bytes(range(256)), 13 + 128, "80"),
], ids=["latin-1-row", "latin-1-after-64k", "png-bytes", "binary-row"])
def test_manifest_that_is_not_utf8_names_file_and_offset(data, offset, byte, tmp_path, capsys):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(data)
    code, _, err = run_cli(["batch", manifest, "--out", tmp_path / "out"], capsys)
    assert one_error_line(code, err).startswith(f"{manifest} is not UTF-8 text: byte 0x{byte} at offset {offset} ")
    assert data[offset:offset + 1].hex() == byte  # the offset is the bad byte's
    assert files_in(tmp_path / "out") == []


# --- 4. JSON nested 100,000 deep --------------------------------------------------------------------------------------
DEEP = "[" * 100_000 + "]" * 100_000


def _deep_model(folder: Path) -> Path:
    shutil.copytree(KNOWN_MODELS["toy"], folder / "toy")
    (folder / "toy" / "model.json").write_text('{"format": ' + DEEP + "}")
    return folder / "toy"


def _deep_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


DEEP_INPUTS = {
    "jsonl-manifest": lambda f: ["batch", _deep_file(f / "m.jsonl", '{"image": "p.png", "phrase": "x", "extra": ' + DEEP
                                                     + "}\n")],
    "model.json": lambda f: ["ground", IMAGE, "effusion", "--model", _deep_model(f)],
    "config": lambda f: ["ground", IMAGE, "effusion", "--config", _deep_file(f / "deep.json", DEEP)],
    "set": lambda f: ["ground", IMAGE, "effusion", "--set", f"threshold={DEEP}"],
    "grid": lambda f: ["sweep", "--grid", f"threshold={DEEP}", "--n", "2"],
}
"""Where the nesting is, as the command's arguments (IMAGE: the phantom) without --out; --set and --grid are
neighbours of --config found by this pass (json.loads ran out of stack: RecursionError)."""
IMAGE = "IMAGE"


@pytest.mark.parametrize("where", sorted(DEEP_INPUTS))
def test_json_nested_100000_deep_is_refused_naming_the_limit(where, image, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [image if a == IMAGE else a for a in DEEP_INPUTS[where](tmp_path)] + ["--out", out]
    code, _, err = run_cli(argv, capsys)
    message = one_error_line(code, err)
    assert "nested deeper than the limit of 64 levels" in message and len(message) < 400
    assert files_in(out) == []


# --- 5. a report over the size limit ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "expected"), [
    (MAX_REPORT_CHARS + 1, f"the report has {MAX_REPORT_CHARS + 1:,} characters, over the limit of "
                           f"{MAX_REPORT_CHARS:,}"),
    (4 * MAX_REPORT_CHARS + 1, f"over the limit of {4 * MAX_REPORT_CHARS:,} bytes"),
], ids=["characters", "bytes"])
def test_report_file_over_the_size_limit_names_limit_and_variable(size, expected, image, tmp_path, capsys):
    report = tmp_path / "report.txt"
    report.write_text(("Small pleural effusion. " * (size // 24 + 1))[:size])
    code, _, err = run_cli(["report", image, "--report", report, "--out", tmp_path / "out"], capsys)
    message = one_error_line(code, err)
    assert expected in message and MAX_REPORT_CHARS_ENV in message
    assert not (tmp_path / "out").exists()


# --- 6. a full disk ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("command", "fail_at"), [("ground", 1), ("report", 2)])
def test_full_disk_names_folder_and_free_space_and_leaves_no_partial_file(command, fail_at, image, tmp_path, capsys,
                                                                         monkeypatch):
    """ENOSPC from the write of the ``fail_at``-th output file (``report``: its second heatmap): the error names the
    folder and its free space; the temporary file is gone and every file left is whole."""
    real_fsync, calls = os.fsync, []

    def fsync(descriptor: int) -> None:
        calls.append(descriptor)
        if len(calls) >= fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    (tmp_path / "report.txt").write_text(REPORT)
    what = ["effusion"] if command == "ground" else ["--report", tmp_path / "report.txt"]
    code, _, err = run_cli([command, image, *what, *TINY, "--out", out], capsys)
    message = one_error_line(code, err)
    assert re.search(rf"cannot write \S+ in {re.escape(str(out))}: No space left on device \([\d,.]+ MB free\)$",
                     message), message
    left = files_in(out)
    assert len(left) == fail_at - 1 and not [p for p in left if ".tmp-" in p.name]
    for path in left:  # whole files only
        {".npy": np.load, ".png": lambda p: Image.open(p).load(), ".json": lambda p: json.loads(p.read_text())
         }[path.suffix](path)


# --- 8. names over the file system's limit ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["image", "out", "manifest", "report", "config", "dataset-root", "dataset-csv",
                                  "run-folder"])
def test_names_over_the_file_system_limit_are_one_line(name, image, tmp_path, capsys):
    long = tmp_path / ("n" * 300)
    (tmp_path / "report.txt").write_text(REPORT)
    out = tmp_path / "out"
    argv = {
        "image": ["ground", long.with_suffix(".png"), "effusion", "--out", out],
        "out": ["ground", image, "effusion", "--out", long],
        "manifest": ["batch", long.with_suffix(".csv"), "--out", out],
        "report": ["report", image, "--report", long.with_suffix(".txt"), "--out", out],
        "config": ["ground", image, "effusion", "--config", long.with_suffix(".json"), "--out", out],
        "dataset-root": ["eval", "--dataset", "nih", "--root", long, "--method", "centre", "--out", out],
        "dataset-csv": ["eval", "--dataset", "csv", "--root", tmp_path, "--csv", long.with_suffix(".csv"), "--method",
                        "centre", "--out", out],
        "run-folder": ["compare", long],
    }[name]
    code, _, err = run_cli(argv, capsys)
    message = one_error_line(code, err)
    assert message.endswith("File name too long") and "n" * 100 in message
    assert files_in(out) == []


def test_long_image_and_folder_names_give_fitted_output_names(image, tmp_path, capsys):
    """An image named with 250 bytes (multi-byte characters) in a folder whose name has 250 bytes: every output name
    fits 255 bytes, and the temporary names did too (the run wrote its files)."""
    named = tmp_path / ("é" * 60 + "x" * 126 + ".png")
    shutil.copy(image, named)
    out = tmp_path / ("ø" * 125)
    assert len(named.name.encode()) == 250 and len(out.name.encode()) == 250
    phrases = ["small right pleural effusion", "left mid zone nodule"]
    code, _, err = run_cli(["ground", named, *phrases, *TINY, "--out", out], capsys)
    assert code == 0, err
    written = files_in(out)
    assert len(written) == 6 and all(len(p.name.encode()) <= MAX_NAME_BYTES for p in written)
    assert sorted(json.loads(p.read_text())["phrase"] for p in written if p.suffix == ".json") == sorted(phrases)


def test_output_names_fit_whatever_the_phrase():
    base = "pleural effusion " * 20
    names = {output_name(Path("/x") / ("ü" * 120 + ".png"), base + tail, "settings") for tail in ("a", "b", "é" * 300)}
    assert len(names) == 3  # cut to the same readable part, told apart by the hash
    assert all(len(name.encode()) <= NAME_ROOM for name in names)  # room for a suffix and a temporary name
    assert NAME_ROOM + len(".json") + len(".tmp-4194304") + 1 <= MAX_NAME_BYTES


# --- 9. runs over the confirm threshold -------------------------------------------------------------------------------
def test_sweep_over_the_threshold_needs_yes(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cost, "CONFIRM_SECONDS", 0.0)  # every run is "over an hour" now
    argv = ["sweep", "--seed", "5000001", "--n", "1", "--grid", "threshold=otsu,none", *TINY, "--out",
            tmp_path / "sweep"]
    code, _, err = run_cli(argv, capsys)
    (estimate,) = [line for line in err.splitlines() if line.startswith("the sweep: ")]
    assert re.fullmatch(r"the sweep: [\d,]+ UNet evaluations, about [\d.]+ (s|min|h) here", estimate)
    assert one_error_line(code, err.split(estimate + "\n")[-1]) == \
        f"{estimate}, over 0 s; pass --yes to run it anyway, or fewer --grid values or a smaller --n"
    assert files_in(tmp_path / "sweep") == []
    code, out, err = run_cli([*argv, "--yes"], capsys)
    assert code == 0, err
    assert len(json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]) == 2 and "| 1 |" in out


def test_toy_eval_over_the_threshold_needs_yes(capsys, monkeypatch):
    monkeypatch.setattr(cost, "CONFIRM_SECONDS", 0.0)
    argv = ["toy", "eval", "--seed", "9100000", "--n", "1", "--methods", "ldm", "centre", *TINY]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == ""
    assert re.search(r"medground: error: the toy table: [\d,]+ UNet evaluations, about [\d.]+ (s|min|h) here, "
                     r"over 0 s; pass --yes to run it anyway, or a smaller --n or fewer --methods\n$", err), err
    code, out, err = run_cli([*argv, "--yes"], capsys)
    assert code == 0, err
    assert "| ldm |" in out and "| centre |" in out


def test_sweep_and_toy_eval_on_phantoms_without_findings_are_one_line(tmp_path, capsys):
    """Found by this pass: phantom 5000000 (and 9100009) has no finding, and a sweep or toy table of it ended in a
    KeyError in the summary; ``eval`` already refused it."""
    for argv in (["sweep", "--n", "1", "--grid", "threshold=otsu,none", "--out", tmp_path / "sweep"],
                 ["toy", "eval", "--seed", "9100009", "--n", "1", "--methods", "centre"]):
        code, _, err = run_cli(argv, capsys)
        assert one_error_line(code, err).endswith("have no finding, so there is no sample to evaluate; take more "
                                                  "phantoms (a larger --n)")
    assert not (tmp_path / "sweep").exists()


# --- 10. settings and model descriptions out of bounds ----------------------------------------------------------------
def test_seed_over_32_bits_is_refused_naming_the_limit(toy_model):
    for overrides in ({"noise_seed": 2**70}, {"noise_seed": 2**32}, {"noise_seed": -1}):
        with pytest.raises(ConfigError, match=rf"noise_seed must be an integer in \[0, 4294967295\], got "
                                              rf"{overrides['noise_seed']}$"):
            Grounder(toy_model, overrides=overrides)
    assert Grounder(toy_model, overrides={"noise_seed": 2**32 - 1}).config.noise_seed == 2**32 - 1


ABSURD_MODELS = {
    "train-timesteps-1e9": (lambda s: s["noise_schedule"].update(num_train_timesteps=1e9),
                            r"num_train_timesteps must be an integer in \[2, 10000\], got 1000000000.0"),
    "train-timesteps-int": (lambda s: s["noise_schedule"].update(num_train_timesteps=10**9),
                            r"num_train_timesteps must be an integer in \[2, 10000\]"),
    "unet-channels-1e6": (lambda s: s["unet"]["args"].update(channels=[10**6] * 3, num_head_channels=[0, 10**6, 10**6]),
                          r"\[unet\]: the network it describes has [\d,]+ parameters, over the limit of 4,000,000,000"),
}


@pytest.mark.parametrize("case", sorted(ABSURD_MODELS))
def test_absurd_model_descriptions_are_refused_before_allocating(case, tmp_path):
    folder = Path(shutil.copytree(KNOWN_MODELS["toy"], tmp_path / "toy"))
    spec = json.loads((folder / "model.json").read_text())
    change, message = ABSURD_MODELS[case]
    change(spec)
    (folder / "model.json").write_text(json.dumps(spec))
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=message):
        load_model(folder)
    assert time.perf_counter() - started < 20  # counted on the meta device: 5e14 parameters were never allocated


# --- 11. Ray ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("address", "expected"), [
    ("not a url", "--address 'not a url' is not a Ray address: use auto, HOST:PORT or ray://HOST:PORT"),
    ("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1: Connection refused"),
    ("ray://127.0.0.1:99999", "is not a Ray address"),
], ids=["not-an-address", "nothing-listening", "port-out-of-range"])
def test_ray_address_that_is_not_a_cluster_fails_fast(address, expected, tmp_path, capsys):
    pytest.importorskip("ray", reason="--engine ray needs the medground[ray] extra")
    started = time.perf_counter()
    code, _, err = run_cli(["eval", "--dataset", "phantoms", "--n", "2", "--method", "centre", "--engine", "ray",
                            "--address", address, "--out", tmp_path / "out"], capsys)
    assert expected in one_error_line(code, err)
    assert time.perf_counter() - started < 30 and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=re.escape(expected)):
        check_address(address)


def test_workers_beyond_the_cluster_are_refused_naming_what_it_has():
    resources = {"CPU": 8.0, "memory": 1e10}
    with pytest.raises(ConfigError, match="--worker-threads 64 is more than the Ray cluster's 8 CPUs"):
        check_workers(resources, gpu=False, threads=64, workers=None)
    with pytest.raises(ConfigError, match="--workers 3 x --worker-threads 4 needs 12 CPUs; the Ray cluster has 8"):
        check_workers(resources, gpu=False, threads=4, workers=3)
    with pytest.raises(ConfigError, match="--workers 4 needs 4 GPUs; the Ray cluster has 2"):
        check_workers({**resources, "GPU": 2.0}, gpu=True, threads=1, workers=4)
    with pytest.raises(ConfigError, match="needs GPUs in the Ray cluster; it has none"):
        check_workers(resources, gpu=True, threads=1, workers=None)
    assert check_workers(resources, gpu=False, threads=4, workers=None) == 2  # what fits, when it fits
    assert check_workers(resources, gpu=False, threads=2, workers=4) == 4
    assert check_workers({**resources, "GPU": 2.0}, gpu=True, threads=1, workers=None) == 2


# --- 12. the Python API ----------------------------------------------------------------------------------------------
def _closed_pil_image(folder: Path) -> Image.Image:
    picture = Image.open(phantom_png(folder / "closed.png"))
    picture.close()
    return picture


API_CASES = {
    "overrides-list": (lambda g, t, f: Grounder(t, overrides=[("threshold", "none")]), ConfigError,
                       "overrides must be a dict of setting names"),
    "overrides-int-key": (lambda g, t, f: Grounder(t, overrides={1: "none"}), ConfigError,
                          "overrides must be a dict of setting names"),
    "cache-size-negative": (lambda g, t, f: Grounder(t, cache_size=-1), ConfigError,
                            r"cache_size must be an integer >= 0, got -1"),
    "empty-array": (lambda g, t, f: g.ground(np.zeros((0, 0), np.float32), ["effusion"]), ImageError,
                    r"the array is empty \(shape \(0, 0\)\)"),
    "empty-1d-array": (lambda g, t, f: g.ground(np.array([]), ["effusion"]), ImageError, "2-D grayscale"),
    "closed-pil-image": (lambda g, t, f: g.ground(_closed_pil_image(f), ["effusion"]), ImageError,
                         "cannot read the PIL image: Operation on closed image"),
    "lone-surrogate": (lambda g, t, f: g.ground(np.eye(64, dtype=np.float32), ["pleural effu\ud800sion"]), PhraseError,
                       r"invisible characters \['U\+D800'\]"),
    "zero-width-space": (lambda g, t, f: g.ground(np.eye(64, dtype=np.float32), ["pneumo\u200bthorax"]), PhraseError,
                         r"invisible characters \['U\+200B'\]"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_python_api_refuses_bad_arguments_before_any_unet_work(case, toy_model, tmp_path):
    grounder = Grounder(toy_model, overrides=TINY_SETTINGS)
    call, error, message = API_CASES[case]
    with pytest.raises(error, match=message) as caught:
        call(grounder, toy_model, tmp_path)
    assert isinstance(caught.value, MedgroundError)
    assert grounder.unet_evaluations == {"unconditional": 0, "conditional": 0}


# --- 13. colours ---------------------------------------------------------------------------------------------------
def test_two_hundred_findings_get_two_hundred_colours():
    """Findings are numbered from 1 (``finding_colour(number)``): findings 1..200 have 200 colours."""
    colours = [finding_colour(i + 1) for i in range(200)]
    assert len(set(colours)) == 200
    assert all(re.fullmatch(r"#[0-9a-f]{6}", colour) for colour in colours)


# --- 14. EXIF orientation ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(kind, tmp_path):
    """Orientation 6 means "turn 90 degrees clockwise to view": the image reads turned, as viewers show it."""
    stored = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"turned.{kind.lower()}"
    Image.fromarray(stored).save(path, format=kind, exif=exif)
    decoded = np.asarray(Image.open(path).convert("L"))  # as stored (JPEG: after its lossy round trip)
    assert decoded.shape == (48, 64)
    pixels = read_image(path)
    assert pixels.shape == (64, 48) and image_size(path) == (48, 64)  # (width, height) from the header, turned
    assert np.array_equal(pixels, np.rot90(decoded, -1).astype(np.float32) / 255)
    assert not np.array_equal(pixels, np.rot90(decoded, 1).astype(np.float32) / 255)  # and turned the right way


# --- 15. devices and pipes --------------------------------------------------------------------------------------------
def test_a_device_as_image_is_not_called_missing(tmp_path, capsys):
    for device in (Path("/dev/null"), _fifo(tmp_path / "image-pipe")):
        with pytest.raises(ImageError) as caught:
            read_image(device)
        assert str(caught.value) == f"{device} is a device, pipe or socket, not an image file; save the image to a " \
                                    "file first"
    code, _, err = run_cli(["ground", "/dev/null", "effusion", "--out", tmp_path / "out"], capsys)
    message = one_error_line(code, err)
    assert "not found" not in message and "device" in message


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _in_thread(call, seconds: float):
    """``call()``'s result or exception, or a failure when it is still running after ``seconds``."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), outcome


def test_a_pipe_nothing_writes_to_is_refused_not_waited_on(tmp_path, monkeypatch):
    monkeypatch.setattr(text_input, "PIPE_WAIT_SECONDS", 0.5)
    pipe = _fifo(tmp_path / "report.fifo")
    started = time.perf_counter()
    hung, outcome = _in_thread(lambda: read_report(pipe), 30)
    if hung:  # let the reader go before failing
        with open(pipe, "w"):
            pass
    assert not hung, "reading a pipe that nothing writes to hung"
    assert isinstance(outcome.get("error"), ReportError)
    assert str(outcome["error"]) == f"{pipe} is a pipe (FIFO) and nothing was written to it within 0.5 s; save the " \
                                    "report to a file, or pass - to read standard input"
    assert time.perf_counter() - started < 10


def test_a_pipe_with_a_writer_still_reads(tmp_path, monkeypatch):
    """``--report <(command)`` and ``--report /dev/stdin`` are pipes too; a writer that comes is read whole."""
    monkeypatch.setattr(text_input, "PIPE_WAIT_SECONDS", 20)
    pipe = _fifo(tmp_path / "report.fifo")

    def write() -> None:
        time.sleep(0.2)
        with open(pipe, "w", encoding="utf-8") as handle:
            handle.write("\ufeff" + REPORT)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    hung, outcome = _in_thread(lambda: read_report(pipe), 30)
    writer.join(5)
    assert not hung and outcome == {"value": REPORT}


# --- 16. one mention the text encoder cannot take ---------------------------------------------------------------------
def test_an_ungroundable_mention_is_dropped_with_its_reason(toy_model, image):
    """The toy's text encoder takes 24 tokens; the first mention has 26. It is dropped, the nodule is grounded."""
    long = "Moderate to large right-sided pleural effusion, left greater than right"
    grounder = Grounder(toy_model, overrides=TINY_SETTINGS)
    grounding = ground_report(grounder, image, f"FINDINGS: {long}. Left mid zone nodule.")
    assert [f.text for f in grounding.findings] == ["Left mid zone nodule"]
    assert grounding.findings[0].result.heatmap.shape == (64, 64)
    ((dropped, reason),) = [(m.text, m.reason) for m in grounding.dropped]
    assert dropped == long and reason.startswith("not groundable: ") and "at most 24" in reason
    assert f"not grounded: {long!r} (not groundable" in grounding.message


# --- 17. a DICOM too large to decode ----------------------------------------------------------------------------------
def test_huge_dicom_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    """The header says 10000 x 10000; the file holds 3,200 bytes of pixels, so decoding would fail otherwise."""
    huge = write_dicom(tmp_path / "huge.dcm", np.tile(np.arange(40, dtype=np.uint16) * 100, (40, 1)), Rows=10_000,
                       Columns=10_000)
    assert huge.stat().st_size < 10_000
    for read in (read_image, image_size):
        with pytest.raises(ImageError, match=f"100,000,000 pixels is over the limit of [\\d,]+ .*set {MAX_PIXELS_ENV}"):
            read(huge)
    small = write_dicom(tmp_path / "small.dcm", np.tile(np.arange(64, dtype=np.uint16) * 64, (48, 1)))
    monkeypatch.setenv(MAX_PIXELS_ENV, "3000")
    with pytest.raises(ImageError, match="3,072 pixels is over the limit of 3,000"):
        read_image(small)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(10**9))
    assert read_image(small).shape == (48, 64) and read_image(small)[0, -1] == 1.0
    with pytest.raises(ImageError, match="cannot read .*huge.dcm as DICOM"):  # past the limit: the broken data named
        read_image(huge)


# --- 18. the web app's per-visitor state ------------------------------------------------------------------------------
def test_app_keeps_a_display_size_picture_and_removes_visitors_files(toy_model, image, tmp_path):
    upload = tmp_path / "large.png"
    Image.open(image).resize((1300, 1000)).save(upload)
    session = Session(Grounder(toy_model, overrides=TINY_SETTINGS), tmp_path / "work",
                      {"model": "toy", "preset": "paper"}, max_visitors=2)
    answers = {visitor: session.answer(str(upload), mode, text, visitor=visitor) for visitor, mode, text in
               [("a", "Report", REPORT), ("b", "Phrases", "left mid zone nodule")]}
    assert not any(answer.error for answer in answers.values())
    folders = {visitor: answer.files[0].parent for visitor, answer in answers.items()}
    assert all(folder.is_dir() for folder in folders.values()) and folders["a"] != folders["b"]

    picture = answers["a"].picture  # what the page keeps per visitor
    full = answers["a"].grounding.findings[0].result.heatmap
    assert full.shape == (1000, 1300) and len(picture.findings) == 2
    arrays = [picture.image, *(f.heatmap for f in picture.findings), *(f.mask for f in picture.findings)]
    assert all(max(array.shape) <= DISPLAY_SIDE for array in arrays)
    assert sum(array.nbytes for array in arrays) < full.nbytes

    third = session.answer(str(upload), "Phrases", "cardiomegaly", visitor="c")  # one more than max_visitors
    assert not folders["a"].exists() and folders["b"].is_dir()  # the least recent visitor's files are gone
    session.forget("b")
    assert not folders["b"].exists()
    assert list((tmp_path / "work" / "results").iterdir()) == [third.files[0].parent]  # c's folder alone



def test_app_query_leaves_no_matplotlib_figure_for_a_later_collection(toy_model, image, tmp_path):
    """Closed figures live on in reference cycles until a full collection; each answer collects them (docs/memory.md
    measured ~185 MB per 10-phrase query on a large image otherwise). Automatic collection is off here, so only the
    answer's own collection can free them."""
    import gc

    from matplotlib.figure import Figure

    session = Session(Grounder(toy_model, overrides=TINY_SETTINGS), tmp_path / "work",
                      {"model": "toy", "preset": "paper"})
    gc.collect()
    gc.disable()
    try:
        answer = session.answer(str(image), "Report", REPORT, visitor="a")
        alive = [o for o in gc.get_objects() if isinstance(o, Figure)]
    finally:
        gc.enable()
    assert not answer.error and answer.picture is not None
    assert alive == []

# --- 19. ground_many keeps one full result at a time ---------------------------------------------------------------
def test_ground_many_with_reduce_keeps_no_full_result_alive(toy_model, image):
    grounder = Grounder(toy_model, overrides=TINY_SETTINGS)
    items = [(image, ["small right pleural effusion", "left mid zone nodule", "cardiomegaly"]),
             (np.flipud(read_image(image)).copy(), ["pleural effusion", "nodule"])]
    for compact in (True, False):
        made: list[weakref.ref] = []
        alive_at_each_reduce = []

        def reduce(result, compact=compact, made=made, alive=alive_at_each_reduce):
            alive.append(sum(ref() is not None for ref in made))  # full results made before this one, still alive
            made.append(weakref.ref(result))
            return compact_result(result, side=32, dtype="float32") if compact else result

        results = grounder.ground_many(items, reduce)
        assert [len(r) for r in results] == [3, 2] and len(made) == 5
        if compact:
            assert alive_at_each_reduce == [0] * 5 and all(ref() is None for ref in made)
            assert type(results[0][0]).__name__ == "CompactResult" and results[0][0].phrase == items[0][1][0]
        else:  # the control: results that are kept stay alive, so the check above can fail
            assert alive_at_each_reduce == [0, 1, 2, 3, 4] and all(ref() is not None for ref in made)


# --- 20. weights in a medground model folder ------------------------------------------------------------------------
def test_int8_weights_in_a_model_folder_are_refused_naming_the_file(tmp_path):
    folder = Path(shutil.copytree(KNOWN_MODELS["toy"], tmp_path / "toy"))
    weights = folder / "unet.safetensors"
    state = {k: v.clone() for k, v in load_file(str(weights)).items()}
    key = sorted(state)[-1]
    state[key] = (state[key] * 100).to(torch.int8)
    save_file(state, str(weights))
    with pytest.raises(ModelLoadError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert message.startswith(f"{weights}: weight {key!r} is int8") and "floating-point" in message
    assert "weights_only" not in message


class _Payload:
    """Pickled, this would run a command when loaded without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_text_encoder_in_a_model_folder_is_refused(tmp_path):
    folder = Path(shutil.copytree(KNOWN_MODELS["toy"], tmp_path / "toy"))
    state = dict(load_file(str(folder / "text_encoder" / "model.safetensors")))
    (folder / "text_encoder" / "model.safetensors").unlink()
    state["payload"] = _Payload(tmp_path / "marker")
    torch.save(state, folder / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'text_encoder' / 'pytorch_model.bin'} holds pickled code or objects")
    assert "weights_only" not in message and not (tmp_path / "marker").exists()


# --- 21. a grid value given twice -------------------------------------------------------------------------------------
def test_a_repeated_grid_value_is_refused_before_any_computation(tmp_path, capsys, monkeypatch):
    import medground.loading

    monkeypatch.setattr(medground.loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    code, _, err = run_cli(["sweep", "--grid", "threshold=otsu,otsu", "--n", "2", "--out", tmp_path / "sweep"], capsys)
    assert one_error_line(code, err) == \
        "--grid threshold lists 'otsu' more than once; each value is one combination"
    assert not (tmp_path / "sweep").exists()


def test_a_run_killed_while_writing_leaves_no_temporary_file_after_its_resume(tmp_path):
    """A SIGKILL between ``write_atomic``'s write and rename leaves ``.NAME.tmp-PID``; the next holder of the lock
    removes it (the evaluation store here; tests/test_batch_kills.py kills a real batch)."""
    from medground.evaluate.store import RunWriter

    record = {"method": "centre", "dataset": "phantoms"}
    with RunWriter(tmp_path).open(record, resume=False) as writer:
        writer.save_preview("a", np.zeros((4, 4), np.float32))
    (tmp_path / ".run.json.tmp-4242").write_bytes(b'{"meth')
    (tmp_path / "previews" / ".b.npy.tmp-4242").write_bytes(b"\x93NUMPY")
    (tmp_path / "previews" / "keep.tmp-notapid").write_bytes(b"mine")
    with RunWriter(tmp_path).open(record, resume=True):
        pass
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and ".tmp-" in p.name) == ["keep.tmp-notapid"]
    assert json.loads((tmp_path / "run.json").read_text()) == record
