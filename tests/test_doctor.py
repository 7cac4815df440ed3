"""``medground doctor`` and the errors about missing extras: the same install line in both places."""

from __future__ import annotations

import importlib.util

import pytest

from medground import doctor
from medground.app.server import check_can_serve
from medground.cli import main
from medground.errors import ExtraNotInstalledError
from medground.extras import EXTRAS, extra_missing
from medground.loading import KNOWN_MODELS


def hide_modules(monkeypatch, *names: str) -> None:
    """Make ``find_spec`` report ``names`` as not installed, as on a machine without their extra."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def test_doctor_lists_python_extras_models_browser_and_hub(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) <= 40  # one screen
    for title in ("Python", "Extras", "Models", "Browser tests", "Hugging Face hub"):
        assert f"\n{title}\n" in f"\n{text}"
    for name in EXTRAS:
        assert f"\n  {name} " in text
    for name, path in KNOWN_MODELS.items():
        assert f"{name}" in text and str(path) in text
    assert "torch " in text and "devices    cpu" in text


def test_a_missing_extra_shows_the_line_its_error_prints(monkeypatch):
    hide_modules(monkeypatch, "gradio")
    screen = "\n".join(doctor.extras_lines())
    assert "app        no " in screen and "lacks gradio: pip install 'medground[app]'" in screen
    assert "reports    yes" in screen  # medspacy is still there
    with pytest.raises(ExtraNotInstalledError) as caught:
        check_can_serve("127.0.0.1", 0)
    assert str(caught.value) == "the web app: gradio not installed; pip install 'medground[app]'"
    assert EXTRAS["app"].install_line in screen


def test_the_error_names_the_cause_after_the_install_line(monkeypatch):
    hide_modules(monkeypatch, "medspacy")
    error = extra_missing("reports", "reading reports", ImportError("No module named 'medspacy'"))
    assert str(error) == ("reading reports: medspacy not installed; pip install 'medground[reports]' "
                          "(No module named 'medspacy')")


def test_offline_state_and_missing_browser_are_said(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base").mkdir(parents=True)
    hub = "\n".join(doctor.hub_lines())
    assert "offline    yes" in hub and "stabilityai/stable-diffusion-2-1-base" in hub
    monkeypatch.setenv("MEDGROUND_CHROMIUM", str(tmp_path / "no-chromium"))
    browser = doctor.browser_lines()[0]
    assert "not found" in browser and "apt-get install -y chromium chromium-driver" in browser
