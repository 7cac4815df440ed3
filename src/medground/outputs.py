"""Names of output files that never collide (a readable slug plus a hash of exactly what was grounded), and the
refusal to write through symbolic links that every writer shares."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from medground.errors import RunDirError


def output_name(image: str | Path, phrase: str, settings: str = "") -> str:
    """``{image stem}_{phrase slug}_{8 hex}``: the hash covers the image's full path, the exact phrase and the
    ``settings`` (model and effective config), so two different phrases, images or recipes never share a name,
    whatever the slug keeps of them; a rerun of the same thing rewrites the same files."""
    image_text = str(Path(image).resolve()) if isinstance(image, Path) else str(image)
    slug = re.sub(r"[^a-z0-9]+", "-", phrase.lower()).strip("-")[:40].strip("-") or "phrase"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(image_text).stem)[:40] or "image"
    digest = hashlib.sha1(f"{image_text}\n{phrase}\n{settings}".encode()).hexdigest()[:8]
    return f"{stem}_{slug}_{digest}"


def refuse_link(path: Path) -> Path:
    """``path``, unless it is a symbolic link: writing or reading through one would leave the folder it names."""
    if path.is_symlink():
        raise RunDirError(f"{path} is a symbolic link; medground does not write or read through links")
    return path


def output_path(folder: Path, name: str) -> Path:
    """``folder / name``, refusing a symbolic link."""
    return refuse_link(Path(folder) / name)
