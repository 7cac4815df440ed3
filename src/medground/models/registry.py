"""Model names that ``load_model`` resolves without a path."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent

KNOWN_MODELS: dict[str, Path] = {
    "toy": PACKAGE_DIR / "toy" / "model",
}


def resolve_model_dir(path_or_name: str | Path) -> Path:
    """A known name -> its shipped directory; anything else is taken as a path."""
    if isinstance(path_or_name, str) and path_or_name in KNOWN_MODELS:
        return KNOWN_MODELS[path_or_name]
    return Path(path_or_name)
