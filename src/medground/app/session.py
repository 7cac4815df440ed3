"""What the web page does, without the page: check the upload and the text, ground, describe the answer."""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medground.errors import ImageError, MedgroundError, PhraseError, ReportError
from medground.grounder import Grounder
from medground.images import read_image
from medground.reports.grounding import ReportGrounding, ground_phrases, write_outputs

MODES = ("Phrases", "Report")
LAYERS = ("heatmap", "mask", "boxes")
MAX_TEXT_CHARS = 20_000
"""Longer text is not a chest X-ray report (MIMIC-CXR's longest are a few thousand characters)."""

Progress = Callable[[float, str], None]


@dataclass
class Answer:
    """What the page shows after a query: the image and its findings, or an error message."""

    message: str
    error: bool = False
    pixels: np.ndarray | None = None
    grounding: ReportGrounding | None = None
    files: list[Path] = field(default_factory=list)


class Session:
    """One loaded model serving every visitor (queries run one at a time: the page's queue has one worker)."""

    def __init__(self, grounder: Grounder, workdir: Path, settings: dict[str, str]) -> None:
        """``settings``: what the JSON download records about the model (its name or folder, the preset)."""
        self.grounder = grounder
        self.workdir = Path(workdir)
        self.settings = settings

    def preview(self, upload: str | None) -> Answer:
        """The uploaded image on its own, or why it cannot be used."""
        if not upload:
            return Answer("Upload a radiograph (PNG, JPEG or DICOM).")
        try:
            pixels = read_image(Path(upload))
        except ImageError as exc:
            return Answer(_without_folder(str(exc), upload), error=True)
        cached = " Its inversion is cached: a query will reuse it." if self.grounder.is_cached(pixels) else ""
        return Answer(f"{Path(upload).name}: {pixels.shape[1]}x{pixels.shape[0]} pixels.{cached}", pixels=pixels)

    def answer(self, upload: str | None, mode: str, text: str, progress: Progress = lambda _f, _d: None) -> Answer:
        """Ground the typed phrases (one per line) or the pasted report in the uploaded image."""
        try:
            return self._answer(upload, mode, text or "", progress)
        except MedgroundError as exc:
            return Answer(_without_folder(str(exc), upload), error=True)

    def _answer(self, upload: str | None, mode: str, text: str, progress: Progress) -> Answer:
        if not upload:
            raise ImageError("upload a radiograph first (PNG, JPEG or DICOM)")
        if mode not in MODES:
            raise ReportError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if len(text) > MAX_TEXT_CHARS:
            raise ReportError(f"the text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        progress(0.0, "reading the image")
        pixels = read_image(Path(upload))
        cached = self.grounder.is_cached(pixels)
        before = dict(self.grounder.unet_evaluations)
        progress(0.05, "reusing the cached inversion" if cached else "inverting the image (DDIM)")
        started = time.perf_counter()
        if mode == "Report":
            grounding = self.grounder.ground_report(pixels, text)
        else:
            phrases = [line.strip() for line in text.splitlines() if line.strip()]
            if not phrases:
                raise PhraseError("type at least one phrase (one per line)")
            grounding = ground_phrases(self.grounder, pixels, phrases)
        seconds = time.perf_counter() - started
        progress(0.95, "writing the results")
        folder = self.workdir / "results" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        record = {"image": Path(upload).name, **self.settings}
        files = write_outputs(folder, Path(upload).name, pixels, grounding, record)
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
                      grounding=grounding, files=files)


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
    kind = "error" if answer.error else "info"
    role = ' role="alert"' if answer.error else ""
    prefix = "Error: " if answer.error else ""
    return f'<div class="status {kind}"{role}>{html.escape(prefix + answer.message)}</div>'


def _without_folder(message: str, upload: str | None) -> str:
    """Error messages name the upload by its file name, not by the server's temporary folder."""
    return message.replace(str(Path(upload)), Path(upload).name) if upload else message
