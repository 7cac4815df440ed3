"""The command line writes the three outputs per phrase, its help is complete, and every command runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from medground import __version__
from medground.cli import build_parser, main

SUBCOMMANDS = ["ground", "report", "serve", "eval", "sweep", "compare", "batch", "models", "convert-monai-ldm",
               "import-diffusers", "demo", "toy", "toy eval", "doctor"]
SHORT_GRID = ["--set", "inference_steps=40", "--set", "window_start=4", "--set", "window_stop=16"]


def test_ground_writes_heatmap_overlay_and_json(tiny_model_dir, odd_images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["ground", str(odd_images["landscape"]), "small left pleural effusion", "cardiomegaly",
                 "--model", str(tiny_model_dir), "--out", str(out)])
    assert code == 0
    width, height = Image.open(odd_images["landscape"]).size
    for slug in ("small-left-pleural-effusion", "cardiomegaly"):
        (name,) = {p.stem for p in out.glob(f"landscape_{slug}_*")}
        heatmap = np.load(out / f"{name}.npy")
        assert heatmap.shape == (height, width) and np.isnan(heatmap).any()
        assert Image.open(out / f"{name}.png").size[0] > 100
        record = json.loads((out / f"{name}.json").read_text())
        assert record["config"]["window_start"] == 120 and record["config"]["inference_steps"] == 300
        assert record["boxes"] and record["unet_evaluations"]["unconditional"] == 179
        assert set(record["timings_s"]) == {"inversion", "conditional", "postprocess"}  # seconds only
    assert "top box" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tiny_model_dir, tmp_path, capsys):
    code = main(["ground", str(tmp_path / "missing.png"), "effusion", "--model", str(tiny_model_dir),
                 "--out", str(tmp_path)])
    assert code == 2 and "not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command.split(), "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: medground " + command)
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 5  # a sentence saying what it does, not an empty heading
    if command in ("ground", "report", "eval", "sweep", "batch", "serve", "toy eval"):
        for flag in ("--model", "--preset", "--set", "--config", "--text-encoder", "--device", "--precision"):
            assert flag in text


def test_every_subcommand_is_in_the_main_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    listed = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert f"\n    {command.split()[0]}" in listed


def test_version_is_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"medground {version('medground')}" == f"medground {__version__}"


def test_models_lists_the_shipped_models_with_their_family(capsys):
    assert main(["models"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [(name, family, size) for name, family, size, _ in rows] == \
        [("toy", "monai-ldm", "64 px"), ("toy-sd", "diffusers", "64 px")]


def test_demo_writes_overlays_sheet_and_a_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "2", "--n-eval", "6"]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ldm |")]
    assert len(table) == 1 and "grounded" in printed and "contact_sheet.png" in printed
    records = {path.stem: json.loads(path.read_text()) for path in out.glob("phantom*.json")}
    assert len(records) >= 2 and all(r["truth"] and r["config"]["inference_steps"] == 100 for r in records.values())
    for name in records:  # each phrase's heatmap and overlay beside its record
        assert np.load(out / f"{name}.npy").shape == (64, 64) and (out / f"{name}.png").is_file()
    assert len(list(out.glob("phantom*.npy"))) == len(records) == len(list(out.glob("phantom*.png")))
    assert Image.open(out / "contact_sheet.png").size[0] > 500


def test_sweep_ranks_the_combinations_by_the_documented_score(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", "toy", "--n", "6", *SHORT_GRID, "--grid", "threshold=otsu,none",
                 "--grid", "gaussian_sigma=0,2", "--out", str(out)]) == 0
    assert "Ranked by auroc_exact + miou + 0.1 * cnr" in capsys.readouterr().out
    ranked = json.loads((out / "sweep.json").read_text())["rows"]
    assert len(ranked) == 4
    by_hand = []
    for row in ranked:  # the score and the rank recomputed from each combination's own per-sample records
        records = [json.loads(line) for line in (out / row["folder"] / "samples.jsonl").read_text().splitlines()]
        means = {m: sum(r[m] for r in records) / len(records) for m in ("auroc_exact", "miou", "cnr")}
        by_hand.append((means["auroc_exact"] + means["miou"] + 0.1 * means["cnr"], row["settings"]))
        assert math.isclose(row["score"], by_hand[-1][0], rel_tol=1e-12)
        run = json.loads((out / row["folder"] / "run.json").read_text())
        assert run["config"]["threshold"] == row["settings"]["threshold"]
        assert run["config"]["gaussian_sigma"] == row["settings"]["gaussian_sigma"]
    assert [settings for _, settings in sorted(by_hand, key=lambda pair: -pair[0])] == \
        [row["settings"] for row in ranked]
    assert len({row["score"] for row in ranked}) == 4  # the settings matter, so the ranking says something
