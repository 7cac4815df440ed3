"""Every file medground writes goes through here: names, folders, the writer's lock, atomic writes, resume checks,
and the files of one grounding (heatmap ``.npy``, overlay ``.png``, record ``.json``).

Guarantees, for every command:
- a name is a readable slug plus a hash of exactly what was grounded (image, phrase or report, model, effective
  settings), cut to fit a file system's 255 bytes with its suffix, so two different things never share a name and
  a rerun of the same thing rewrites the same files;
- a file is written under a temporary name and renamed: it is whole or absent. On a full disk the temporary file is
  removed and the error names the folder and its free space;
- nothing is written or read through a symbolic link, and a second writer of a run folder fails at once (``.lock``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medground.errors import MedgroundError, RunDirError

if TYPE_CHECKING:
    from medground.config import GroundingConfig
    from medground.results import GroundingResult, ReportGrounding

LOCK_FILE = ".lock"
MAX_NAME_BYTES = 255
"""The longest file name common file systems take (ext4, APFS, NTFS), suffix included."""
NAME_ROOM = 200
"""Bytes a base name may use, leaving room for a suffix and the temporary-name decoration."""
SUFFIXES = (".npy", ".png", ".json")
"""The files of one grounding."""


# --- names ----------------------------------------------------------------------------------------------------------
def output_name(image: str | Path, what: str, settings: str = "") -> str:
    """``{image stem}_{slug of what}_{8 hex}``: the hash covers the image's full path, the exact text of ``what``
    (a phrase, or a report) and ``settings`` (model and effective config), so two different phrases, images or
    recipes never share a name, whatever the slug keeps of them.

    Args:
        image: the image's path (a Path is resolved before it is hashed; a string is hashed as given) or name.
        what: the exact text grounded: a phrase, or a report.
        settings: the model and effective config (``grounding_settings``).
    """
    image_text = str(Path(image).resolve()) if isinstance(image, Path) else str(image)
    slug = re.sub(r"[^a-z0-9]+", "-", what.lower()).strip("-")[:40].strip("-") or "phrase"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(image_text).stem)[:40] or "image"
    digest = hashlib.sha1(f"{image_text}\n{what}\n{settings}".encode(errors="surrogatepass")).hexdigest()[:8]
    return fit_name(f"{stem}_{slug}", f"_{digest}")


def fit_name(readable: str, tail: str = "", room: int = NAME_ROOM) -> str:
    """``readable + tail`` in at most ``room`` bytes of UTF-8: the readable part is cut, never the tail (a hash).

    Args:
        readable: the slug, cut at a character boundary to fit.
        tail: kept whole.
        room: the byte budget; ``NAME_ROOM`` leaves space for a suffix and the temporary-name decoration.
    """
    budget = room - len(tail.encode())
    cut = readable.encode()[:budget].decode(errors="ignore")
    return cut + tail


def grounding_settings(model: str | Path, config: GroundingConfig) -> str:
    """What output names hash besides the image and the phrase: the model as given and the effective config."""
    return json.dumps({"model": str(model), "config": config.to_dict()}, sort_keys=True)


def refuse_link(path: Path) -> Path:
    """``path``, unless it is a symbolic link: writing or reading through one would leave the folder it names."""
    if path.is_symlink():
        raise RunDirError(f"{path} is a symbolic link; medground does not write or read through links")
    return path


def output_path(folder: Path, name: str) -> Path:
    """``folder / name``, refusing a symbolic link and a name over the file system's limit."""
    if len(name.encode()) > MAX_NAME_BYTES:
        raise RunDirError(f"file name of {len(name.encode())} bytes is over the limit of {MAX_NAME_BYTES}: "
                          f"{name[:60]}...")
    return refuse_link(Path(folder) / name)


# --- folders and atomic writes --------------------------------------------------------------------------------------
def check_writable_folder(folder: Path) -> Path:
    """Create ``folder`` if needed and prove it can be written, before any expensive work."""
    folder = Path(folder)
    try:
        refuse_link(folder)
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medground-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return folder


def free_space(folder: Path) -> str:
    """The free space of the file system holding ``folder``, for error messages."""
    try:
        return f"{shutil.disk_usage(folder).free / 1e6:,.1f} MB free"
    except OSError:
        return "free space unknown"


def write_atomic(path: Path, data: bytes) -> Path:
    """Replace ``path`` in one step: a crash leaves the old file or the new one, a full disk leaves neither a partial
    file nor the temporary one."""
    output_path(path.parent, path.name)
    temporary = path.with_name(f"{_atomic_prefix(path)}{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path.name} in {path.parent}: {exc.strerror or exc} "
                          f"({free_space(path.parent)})") from None
    return path


def remove_atomic_leftovers(folder: Path) -> None:
    """Delete the temporary files of ``write_atomic`` calls into ``folder`` that were killed before their rename (a
    kill leaves them: no ``finally`` runs). Only for the holder of the folder's ``exclusive_lock``: no live writer
    uses them."""
    for leftover in Path(folder).glob(".*.tmp-*"):
        if leftover.name.rpartition(".tmp-")[2].isdigit() and leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)


def _atomic_prefix(path: Path) -> str:
    """The name of ``write_atomic``'s temporary file for ``path``, but for the writer's process id."""
    return f".{path.name[:MAX_NAME_BYTES - 30]}.tmp-"


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of a ``.npy`` file, so ``write_atomic`` writes it in one step."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def json_bytes(document: Any) -> bytes:
    """``document`` as indented JSON with a final newline, as bytes for ``write_atomic``."""
    return (json.dumps(document, indent=2) + "\n").encode()


def read_json_settings(path: Path, what: str) -> dict[str, Any]:
    """A run's settings file: a JSON object, or a RunDirError naming the file."""
    from medground.text_input import read_json_object

    return read_json_object(refuse_link(path), what, RunDirError)


def check_resumable(folder: Path, previous: dict[str, Any], current: dict[str, Any]) -> None:
    """A run resumes only with the settings it started with; the error lists what differs.

    Args:
        folder: the run folder, for the message.
        previous: the settings the run recorded.
        current: the settings of this invocation.

    Raises:
        RunDirError: a setting differs (the first four differences are named).
    """
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed:
        details = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed[:4])
        raise RunDirError(f"cannot resume {folder}: its settings differ ({details})")


@contextlib.contextmanager
def exclusive_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` for the block (the OS releases it if the process dies), so that a
    second writer of the same folder fails at once instead of writing everything twice."""
    lock_path = refuse_link(Path(folder) / LOCK_FILE)
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 (held open for the block)
    except OSError as exc:
        raise RunDirError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    with handle:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock on this platform: a second writer cannot be detected
            pass
        except OSError:
            raise RunDirError(f"another medground run is writing to {folder} (it holds {lock_path}); wait for it "
                              "or choose another --out") from None
        yield


# --- the files of one grounding -------------------------------------------------------------------------------------
class GroundingFiles:
    """The files of groundings of one image in ``folder``, named by (image, phrase or report, ``settings``).

    Args:
        folder: where the files go (checked beforehand: ``check_writable_folder``).
        image_name: the image's path or name, hashed into every name (``output_name``).
        settings: the model and effective config (``grounding_settings``), so another recipe never overwrites them.
    """

    def __init__(self, folder: Path, image_name: str | Path, settings: str) -> None:
        self.folder = Path(folder)
        self.image_name = image_name
        self.settings = settings

    def name(self, what: str) -> str:
        """The base name (no suffix) of the files of ``what``, a phrase or a report."""
        return output_name(self.image_name, what, self.settings)

    def phrase(self, pixels: np.ndarray, result: GroundingResult, record: dict[str, Any],
               truth: Sequence[tuple[float, float, float, float]] = ()) -> Path:
        """One phrase: heatmap (original pixels, NaN outside the crop), overlay, and ``record`` + the result as JSON;
        returns the common base path (without suffix).

        Args:
            pixels: the (H, W) image in [0, 1] the overlay is drawn on.
            result: the phrase's GroundingResult.
            record: what the JSON records first (image, model, preset); the result's fields follow.
            truth: ground-truth (x, y, w, h) boxes in original pixels, drawn green beside the predicted red ones.

        Raises:
            RunDirError: a file cannot be written (a full disk names the free space), or a name is a symbolic link.
        """
        from medground.viz import overlay_png

        base = self.folder / self.name(result.phrase)
        write_atomic(base.with_name(base.name + ".npy"), npy_bytes(result.heatmap))
        write_atomic(base.with_name(base.name + ".png"),
                     overlay_png(pixels, result.heatmap, result.phrase, result.boxes, truth))
        write_atomic(base.with_name(base.name + ".json"), json_bytes({**record, **result.to_json()}))
        return base

    def report(self, pixels: np.ndarray, grounding: ReportGrounding, record: dict[str, Any]) -> list[Path]:
        """A report (or several phrases shown together): one heatmap per finding, one overlay of all findings (one
        colour each, legend), one JSON of everything with ``record`` first. Returns [json, png, npy...].

        Args:
            pixels: the (H, W) image in [0, 1] the overlay is drawn on.
            grounding: the findings and the mentions left out; with no finding only the JSON is written.
            record: what the JSON records first (image, model, preset).

        Raises:
            RunDirError: as ``phrase``.
        """
        from medground.viz import findings_png

        what = grounding.report if grounding.report is not None else "\n".join(f.text for f in grounding.findings)
        kind = "report" if grounding.report is not None else "phrases"
        base = self.name(f"{kind}\n{what}")
        document = {**record, **grounding.to_json()}
        heatmaps = []
        for finding, row in zip(grounding.findings, document["findings"]):
            path = write_atomic(self.folder / f"{self.name(finding.text)}.npy", npy_bytes(finding.result.heatmap))
            row["heatmap_file"] = path.name
            heatmaps.append(path)
        overlay = [write_atomic(self.folder / f"{base}.png", findings_png(pixels, grounding.findings))] \
            if grounding.findings else []
        return [write_atomic(self.folder / f"{base}.json", json_bytes(document)), *overlay, *heatmaps]


# --- folders written whole (model directories) ---------------------------------------------------------------------
COPY_CHUNK = 1 << 20


def check_new_folder(out: Path, error: type[MedgroundError], marker: str = "model.json") -> None:
    """``out`` is a new folder (or an empty one): a folder written whole never mixes with or replaces files (one
    holding ``marker`` is said to hold a model already)."""
    if out.is_symlink():
        raise error(f"--out {out} is a symbolic link; name a new folder (not a link)")
    if not out.exists():
        return
    if not out.is_dir():
        raise error(f"--out {out} exists and is not a folder; choose a new folder")
    if (out / marker).exists():
        raise error(f"{out} already holds a model; choose another --out")
    entries = sorted(entry.name for entry in out.iterdir())
    if entries:
        raise error(f"--out {out} already exists and is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
                    "choose a new folder, or remove this one first")


def check_apart(out: Path, sources: dict[str, Path], error: type[MedgroundError]) -> None:
    """Writing into a source (or a source into the new folder) would corrupt what is being read and hashed."""
    target = out.resolve()
    for role, folder in sources.items():
        real = folder.resolve()
        if target == real:
            raise error(f"--out {out} is the {role} source folder itself; choose a new folder")
        if target.is_relative_to(real):
            raise error(f"--out {out} lies inside the {role} source folder {folder}; choose a folder outside it")
        if real.is_relative_to(target):
            raise error(f"the {role} source folder {folder} lies inside --out {out}; choose a folder that does not "
                        "contain the source")


@contextlib.contextmanager
def staged_folder(out: Path, error: type[MedgroundError]) -> Iterator[Path]:
    """A hidden sibling of ``out`` to write into, which becomes ``out`` in one rename when the block ends (same file
    system, so the rename is atomic); on any failure it is removed with the parent folders it needed, and a write
    error (a full disk, permissions) is ``error`` naming ``out`` and its free space."""
    created = [parent for parent in reversed(out.absolute().parents) if not parent.exists()]
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:100]}.partial-{os.getpid()}-", dir=out.absolute().parent))
    except OSError as exc:
        _remove_empty(created)
        raise error(f"cannot create the folder for --out {out}: {exc.strerror or exc}") from None
    try:
        yield staging.resolve()
        os.replace(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError):
            raise error(f"cannot write the model for --out {out}: {exc.strerror or exc} "
                        f"({free_space(out.absolute().parent)}); nothing was left behind") from None
        raise


def _remove_empty(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break


def copy_hashed(source: Path, target: Path) -> str:
    """Stream ``source`` into the new file ``target`` in 1 MiB chunks and return the SHA-256 of the bytes that
    passed: the copy is byte for byte the file whose hash is recorded, and no file is ever held in memory."""
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as reader, target.open("xb") as writer:
        for chunk in iter(lambda: reader.read(COPY_CHUNK), b""):
            digest.update(chunk)
            writer.write(chunk)
    return digest.hexdigest()
