"""The package as a stranger gets it: ``python -m build`` makes a wheel and an sdist, and the wheel, installed into a
fresh virtual environment with no source tree on the path, runs the command line on the shipped toy models.

The fresh environment is a real install (torch first, as the Makefile does, so pip takes the CPU build and no CUDA
wheels; then the wheel with its ``reports`` extra): about two minutes on 2 cores, most of it unpacking torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
"""The torch the Makefile installs first (see its comment); the wheel's own requirement is torch>=2.1."""
SHORT_GRID = ["--set", "inference_steps=40", "--set", "window_start=4", "--set", "window_stop=16"]
MAX_WHEEL_MB = 40


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """A wheel and an sdist, built from a copy of the tracked tree by ``python -m build`` (sdist, then the wheel from
    the sdist, as PyPI users' tools do)."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def wheel(dist) -> Path:
    (found,) = dist.glob("medground-*-py3-none-any.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict[str, str]:
    """A fresh virtual environment with the wheel and its ``reports`` extra; returns the environment to run it in,
    started in an empty folder so that nothing of the checkout can be imported."""
    home = tmp_path_factory.mktemp("fresh")
    venv.create(home / "venv", with_pip=True)
    python = str(home / "venv" / "bin" / "python")
    for requirement in (TORCH, f"{wheel}[reports]"):
        done = subprocess.run([python, "-m", "pip", "install", "-q", requirement],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{home / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def run(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args}: {done.stderr[-3000:]}"
    return done.stdout


def test_build_makes_a_wheel_and_an_sdist_of_the_one_version(dist, wheel):
    from medground import __version__

    assert wheel.name == f"medground-{__version__}-py3-none-any.whl"
    assert (dist / f"medground-{__version__}.tar.gz").is_file()


def test_wheel_holds_the_package_and_its_models_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "medground/py.typed" in names
    for model in ("toy/model/model.json", "toy/model/unet.safetensors", "toy/model-sd/model.json",
                  "toy/model-sd/unet/diffusion_pytorch_model.safetensors", "toy/model-sd/vae/config.json"):
        assert f"medground/{model}" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    tops = {name.split("/")[0] for name in names}
    assert tops == {"medground", wheel.name.removesuffix("-py3-none-any.whl") + ".dist-info"}
    for name in names:  # no tests, training logs, docs pictures or caches
        assert not name.endswith((".jsonl", ".pyc", ".png", ".md")), name
        assert "tests/" not in name and "__pycache__" not in name, name
    assert wheel.stat().st_size < MAX_WHEEL_MB * 2**20


def test_installed_wheel_runs_version_models_ground_and_report(installed, tmp_path):
    from medground import __version__

    env, cwd = installed, tmp_path
    assert run(env, cwd, "medground", "--version").strip() == f"medground {__version__}"
    python = run(env, cwd, "python", "-c", "import medground, sys; print(medground.__file__); print(sys.path)")
    location = Path(python.splitlines()[0])
    assert "site-packages" in location.parts and ROOT not in location.parents
    models = dict(line.split("\t")[:2] for line in run(env, cwd, "medground", "models").splitlines())
    assert models == {"toy": "monai-ldm", "toy-sd": "diffusers"}

    run(env, cwd, "python", "-c", "from PIL import Image; from medground.datasets.phantoms import generate_phantom; "
        "Image.fromarray((generate_phantom(3).image * 255).astype('uint8')).save('cxr.png')")
    for model in ("toy", "toy-sd"):
        run(env, cwd, "medground", "ground", "--model", model, *SHORT_GRID, "--out", f"out-{model}",
            "cxr.png", "left pleural effusion")
        (record,) = [json.loads(p.read_text()) for p in (cwd / f"out-{model}").glob("*.json")]
        assert record["phrase"] == "left pleural effusion" and record["boxes"]
        assert len(list((cwd / f"out-{model}").glob("*.npy"))) == len(list((cwd / f"out-{model}").glob("*.png"))) == 1

    (cwd / "report.txt").write_text("FINDINGS: Small left pleural effusion. No pneumothorax.\n")
    run(env, cwd, "medground", "report", "--model", "toy", *SHORT_GRID, "--report", "report.txt", "--out", "rep",
        "cxr.png")
    (summary,) = [json.loads(p.read_text()) for p in (cwd / "rep").glob("cxr_report-*.json")]
    assert [finding["text"].lower() for finding in summary["findings"]] == ["small left pleural effusion"]
