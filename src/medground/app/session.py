"""What the web page does, without the page: check the upload and the text, ground, describe the answer.

Each visitor's downloads live in a folder of their own that holds only their last answer, and is deleted when they
leave or when more than ``MAX_VISITORS`` others came after them; the page keeps only a display-size drawing per
visitor (``viz.FindingsPicture``), never full-size maps.
"""

from __future__ import annotations

import gc
import html
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medground.app.limits import MAX_IMAGE_PIXELS, MAX_PHRASES, MAX_TEXT_CHARS, MAX_VISITORS
from medground.errors import ConfigError, ImageError, MedgroundError, PhraseError
from medground.geometry import prepare_pixels
from medground.grounder import Grounder
from medground.images import image_size, read_image
from medground.outputs import GroundingFiles, grounding_settings
from medground.reports import ground_phrases, ground_report
from medground.reports.findings import read_mentions
from medground.results import ReportGrounding
from medground.text_input import clean_text
from medground.viz import FindingsPicture, findings_picture

MODES = ("Phrases", "Report")
LAYERS = ("heatmap", "mask", "boxes")

Progress = Callable[[float, str], None]


@dataclass
class Answer:
    """What the page shows after a query: the image and its findings, or an error message."""

    message: str
    error: bool = False
    pixels: np.ndarray | None = None
    grounding: ReportGrounding | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def picture(self) -> FindingsPicture | None:
        """The display-size drawing the page keeps (the full-size arrays are dropped with the answer)."""
        if self.pixels is None:
            return None
        return findings_picture(self.pixels, self.grounding.findings if self.grounding else [])


class Session:
    """One loaded model serving every visitor (queries run one at a time: the page's queue has one worker).

    Args:
        grounder: the model and recipe every query runs on.
        workdir: the server's temporary folder; each visitor's results go in a folder under ``results/``.
        settings: what the JSON download records about the model (its name or folder, the preset).
        max_visitors: visitors whose last answer is kept on disk; the least recent beyond this are deleted.
        max_pixels: the largest image accepted, checked from its header before it is decoded.
    """

    def __init__(self, grounder: Grounder, workdir: Path, settings: dict[str, str],
                 max_visitors: int = MAX_VISITORS, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.grounder = grounder
        self.workdir = Path(workdir)
        self.settings = settings
        self.max_visitors = max_visitors
        self.max_pixels = max_pixels
        self._folders: OrderedDict[str, Path] = OrderedDict()
        """Each visitor's results folder, least recently used first."""
        self._running = threading.Lock()
        """Held by the query being answered (``stop`` waits for it)."""
        self._stopping = False
        self.workdir.mkdir(parents=True, exist_ok=True)

    def stop(self, timeout: float) -> bool:
        """Refuse queries from now on (the server is stopping and its folder is about to be deleted) and wait up to
        ``timeout`` seconds for the running one; False if it is still running."""
        self._stopping = True
        if not self._running.acquire(timeout=timeout):
            return False
        self._running.release()
        return True

    def forget(self, visitor: str) -> None:
        """Delete a visitor's results (they left, or others pushed them out)."""
        folder = self._folders.pop(visitor, None)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _results_folder(self, visitor: str | None) -> Path:
        """The visitor's folder, emptied of their previous answer; the least recent visitors' are removed."""
        visitor = visitor or uuid.uuid4().hex
        self.forget(visitor)
        while len(self._folders) >= self.max_visitors:
            self.forget(next(iter(self._folders)))
        folder = self.workdir / "results" / uuid.uuid4().hex
        folder.parent.mkdir(exist_ok=True)  # not the server's folder itself: once deleted, it stays deleted
        folder.mkdir()
        self._folders[visitor] = folder
        return folder

    def _read(self, upload: str) -> np.ndarray:
        """The uploaded image, refused above the app's pixel limit before it is decoded."""
        width, height = image_size(Path(upload))
        if width * height > self.max_pixels:
            raise ImageError(f"{Path(upload).name} is {width}x{height} pixels; this server takes images of at most "
                             f"{self.max_pixels:,} pixels")
        return read_image(Path(upload))

    def preview(self, upload: str | None) -> Answer:
        """The uploaded image on its own, or why it cannot be used."""
        if not upload:
            return Answer("Upload a radiograph (PNG, JPEG or DICOM).")
        try:
            pixels = self._read(upload)
        except MedgroundError as exc:
            return Answer(_without_folder(str(exc), upload), error=True)
        cached = " Its inversion is cached: a query will reuse it." if self.grounder.is_cached(pixels) else ""
        return Answer(f"{Path(upload).name}: {pixels.shape[1]}x{pixels.shape[0]} pixels.{cached}", pixels=pixels)

    def answer(self, upload: str | None, mode: str, text: str, progress: Progress = lambda _f, _d: None,
               visitor: str | None = None) -> Answer:
        """Ground the typed phrases (one per line) or the pasted report in the uploaded image; ``visitor`` names
        whose results folder the downloads replace.

        Args:
            upload: the uploaded file's path; None before an upload.
            mode: ``Phrases`` (one per line, repeats grounded once) or ``Report`` (its findings read by medSpaCy).
            text: the phrases or the report, at most ``MAX_TEXT_CHARS`` characters; invisible characters are removed.
            progress: called with (fraction done, what is happening) for the page's progress bar.
            visitor: the page session whose previous downloads are replaced; None: a fresh folder.

        Returns:
            The Answer to show; a MedgroundError becomes an Answer with ``error`` set, never an exception.
        """
        with self._running:
            if self._stopping:
                return Answer("the server is stopping: the query was not run", error=True)
            try:
                return self._answer(upload, mode, text or "", progress, visitor)
            except MedgroundError as exc:
                return Answer(_without_folder(str(exc), upload), error=True)
            finally:  # matplotlib's closed figures live on in reference cycles (~185 MB for 10 phrases on a large
                gc.collect()  # image) until a full collection, which would otherwise come rarely: docs/memory.md

    def _answer(self, upload: str | None, mode: str, text: str, progress: Progress, visitor: str | None) -> Answer:
        if not upload:
            raise ImageError("upload a radiograph first (PNG, JPEG or DICOM)")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if len(text) > MAX_TEXT_CHARS:
            raise PhraseError(f"the text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        text = clean_text(text)
        if mode == "Phrases":
            phrases = list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))
            if not phrases:
                raise PhraseError("type at least one phrase (one per line)")
            if len(phrases) > MAX_PHRASES:
                raise PhraseError(f"{len(phrases)} phrases; this server grounds at most {MAX_PHRASES} per query")
        else:
            read_mentions(text)  # an empty or unreadable report is refused before any image work
        progress(0.0, "reading the image")
        pixels = self._read(upload)
        prepared = prepare_pixels(pixels, self.grounder.model.image_size)
        cached = self.grounder.is_cached(prepared)
        before = dict(self.grounder.unet_evaluations)
        progress(0.05, "reusing the cached inversion" if cached else "inverting the image (DDIM)")
        started = time.perf_counter()
        if mode == "Report":
            grounding = ground_report(self.grounder, prepared, text, max_findings=MAX_PHRASES)
        else:
            grounding = ground_phrases(self.grounder, prepared, phrases)
        seconds = time.perf_counter() - started
        progress(0.95, "writing the results")
        name = Path(upload).name
        files = GroundingFiles(self._results_folder(visitor), name,
                               grounding_settings(self.settings["model"], self.grounder.config))
        written = files.report(pixels, grounding, {"image": name, **self.settings})
        runs = {kind: self.grounder.unet_evaluations[kind] - before[kind] for kind in before}
        if not grounding.findings:
            how = ""
        elif cached:
            how = (f" Reused the cached inversion of this image: only the conditional passes ran "
                   f"({runs['conditional']} UNet evaluations, {seconds:.1f} s).")
        else:
            how = (f" Inverted the image ({runs['unconditional']} + {runs['conditional']} UNet evaluations, "
                   f"{seconds:.1f} s); the inversion is cached for the next query on this image.")
        return Answer(grounding.message[:1].upper() + grounding.message[1:] + "." + how, pixels=pixels,
                      grounding=grounding, files=written)


def boxes_table(grounding: ReportGrounding | None) -> str:
    """The boxes of every finding as an HTML table (scores to 3 decimals), or nothing before a query."""
    if grounding is None or not grounding.findings:
        return ""
    rows = []
    for finding in grounding.findings:
        cells = [f'<span class="swatch" style="background:{finding.colour}"></span>{finding.number}',
                 html.escape(finding.text), finding.status]
        if not finding.result.boxes:
            rows.append(cells + ["-", "", "", "", "", "flat map" if finding.result.flat else "no region"])
        for rank, box in enumerate(finding.result.boxes, start=1):
            rows.append(cells + [str(rank), str(box.x), str(box.y), str(box.w), str(box.h), f"{box.score:.3f}"])
    head = "".join(f"<th>{name}</th>" for name in ("#", "finding", "status", "box", "x", "y", "w", "h", "score"))
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="boxes"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def status_html(answer: Answer) -> str:
    """The answer's message as the page's status line; an error is marked ``role="alert"`` so screen readers say
    it."""
    kind = "error" if answer.error else "info"
    role = ' role="alert"' if answer.error else ""
    prefix = "Error: " if answer.error else ""
    return f'<div class="status {kind}"{role}>{html.escape(prefix + answer.message)}</div>'


def _without_folder(message: str, upload: str | None) -> str:
    """Error messages name the upload by its file name, not by the server's temporary folder."""
    return message.replace(str(Path(upload)), Path(upload).name) if upload else message
