"""``medground doctor``: what a newcomer's installation has, in one screen.

Each check returns lines instead of printing, so the tests read the same text a user sees. Nothing here downloads or
loads a model: the checks look at versions, files and environment variables only.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path

from medground.extras import EXTRAS

BROWSER_TOOLS = {"MEDGROUND_CHROMIUM": "/usr/bin/chromium", "MEDGROUND_CHROMEDRIVER": "/usr/bin/chromedriver"}
"""The browser that tests/test_browser.py drives and its driver: environment variable and default path."""
BROWSER_INSTALL = "apt-get install -y chromium chromium-driver"


def python_lines() -> list[str]:
    """Python, medground, torch and the devices torch sees."""
    import torch

    from medground import __version__

    lines = [f"python     {platform.python_version()} ({sys.executable})",
             f"medground  {__version__} ({Path(__file__).resolve().parent})",
             f"torch      {torch.__version__}"]
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    lines.append(f"devices    {', '.join(devices)}")
    return lines


def extras_lines() -> list[str]:
    """Each extra: installed, or the modules it lacks and the line that installs it."""
    lines = []
    for extra in EXTRAS.values():
        missing = extra.missing()
        lines.append(f"{extra.name:<10} {'no ' if missing else 'yes'}  {extra.adds}")
        if missing:
            lines.append(f"{'':<15}lacks {', '.join(missing)}: {extra.install_line}")
    return lines


def model_lines() -> list[str]:
    """The names load_model knows without a path, and where their folders are."""
    from medground.backbones.model_dir import MODEL_FILE
    from medground.loading import KNOWN_MODELS

    return [f"{name:<10} {path}{'' if (path / MODEL_FILE).is_file() else '  (missing: reinstall medground)'}"
            for name, path in KNOWN_MODELS.items()]


def browser_tool(variable: str) -> Path:
    """Where the browser tests look for Chromium (``MEDGROUND_CHROMIUM``) or its driver (``MEDGROUND_CHROMEDRIVER``)."""
    return Path(os.environ.get(variable, BROWSER_TOOLS[variable]))


def browser_lines() -> list[str]:
    """Whether the browser tests can find Chromium and its driver."""
    lines = []
    for variable in BROWSER_TOOLS:
        path = browser_tool(variable)
        found = path.is_file() and os.access(path, os.X_OK)
        state = "found" if found else f"not found (set {variable}, or: {BROWSER_INSTALL})"
        lines.append(f"{path.name:<12} {path}: {state}")
    return lines


def hub_lines() -> list[str]:
    """The Hugging Face cache folder, the models already in it, and whether the hub may be reached."""
    from huggingface_hub import constants

    cache = Path(constants.HF_HUB_CACHE)
    cached = sorted(entry.name.removeprefix("models--").replace("--", "/")
                    for entry in cache.glob("models--*")) if cache.is_dir() else []
    offline = constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "") in ("1", "ON", "YES", "TRUE")
    return [f"cache      {cache}{'' if cache.is_dir() else ' (not created yet)'}",
            f"models     {', '.join(cached) if cached else 'none cached'}",
            f"offline    {'yes (HF_HUB_OFFLINE): hub ids resolve from the cache only' if offline else 'no'}"]


def report() -> str:
    """The whole screen ``medground doctor`` prints."""
    sections = {"Python": python_lines(), "Extras": extras_lines(), "Models": model_lines(),
                "Browser tests": browser_lines(), "Hugging Face hub": hub_lines()}
    where = shutil.which("medground")
    if where:
        sections["Python"].append(f"command    {where}")
    return "\n".join(f"{title}\n" + "\n".join(f"  {line}" for line in lines) for title, lines in sections.items())
