"""The command line writes the three outputs per phrase, and its help is complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medground.cli import build_parser, main


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
    assert "top box" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tiny_model_dir, tmp_path, capsys):
    code = main(["ground", str(tmp_path / "missing.png"), "effusion", "--model", str(tiny_model_dir),
                 "--out", str(tmp_path)])
    assert code == 2 and "not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ground", "convert-monai-ldm", "models"])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    assert "usage: medground " + command in text
    if command == "ground":
        for flag in ("--model", "--preset", "--out", "--text-encoder", "PHRASE"):
            assert flag in text
