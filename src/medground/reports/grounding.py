"""Ground what a report asserts in its image: every kept finding shares one inversion of the image."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medground.images import ImageInput, read_image
from medground.outputs import output_name, output_path
from medground.reports.findings import Mention, read_mentions

if TYPE_CHECKING:
    from medground.grounder import Grounder, GroundingResult

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324",
           "#800000")
"""One colour per finding, in order (distinct on gray radiographs); the eleventh finding reuses the first."""
TYPED_PHRASE = "typed"
"""The status of a phrase grounded as given, not read from a report."""


@dataclass
class GroundedFinding:
    """One grounded finding: what the report said about it and where the model puts it."""

    number: int
    """1-based, the order in the report; the legend, the boxes table and the output files use it."""
    text: str
    status: str
    """positive or uncertain (from a report), or ``typed`` (a phrase grounded as given)."""
    result: GroundingResult
    label: str | None = None
    sentence: str | None = None
    section: str | None = None

    @property
    def colour(self) -> str:
        return PALETTE[(self.number - 1) % len(PALETTE)]

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, "text": self.text, "status": self.status, "label": self.label,
                "sentence": self.sentence, "section": self.section, "colour": self.colour,
                "boxes": [box.to_dict() for box in self.result.boxes], "flat": self.result.flat}


@dataclass
class ReportGrounding:
    """The grounded findings of one image and the mentions that were not grounded, with the reason."""

    findings: list[GroundedFinding]
    dropped: list[Mention]
    report: str | None = None
    """The report text, or None when phrases were given directly."""

    @property
    def message(self) -> str:
        """One line a person can read: what was grounded and what was left out, and why."""
        dropped = "; ".join(f"{m.text!r} ({m.reason})" for m in self.dropped)
        if not self.findings:
            found = "no finding mention was recognised" if not self.dropped else \
                "no positive or uncertain finding was found"
            return (f"{found} in the report, so nothing was grounded and no inversion ran"
                    + (f"; not grounded: {dropped}" if dropped else ""))
        uncertain = sum(f.status == "uncertain" for f in self.findings)
        counts = f" ({uncertain} uncertain)" if uncertain else ""
        noun = "finding" if len(self.findings) == 1 else "findings"
        return f"grounded {len(self.findings)} {noun}{counts}" + (f"; not grounded: {dropped}" if dropped else "")

    def to_json(self) -> dict[str, Any]:
        first = self.findings[0].result if self.findings else None
        return {
            "report": self.report,
            "findings": [finding.to_json() for finding in self.findings],
            "not_grounded": [{**mention.to_json(), "reason": mention.reason} for mention in self.dropped],
            "message": self.message,
            "image_size": {"width": int(first.heatmap.shape[1]), "height": int(first.heatmap.shape[0])}
            if first else None,
            "timings_s": first.timings if first else {},
            "config": first.config.to_dict() if first else None,
        }


def ground_report(grounder: Grounder, image: ImageInput, report: str) -> ReportGrounding:
    """Ground the positive and uncertain findings of ``report``; a finding written twice (FINDINGS and IMPRESSION)
    is grounded once, as positive if either mention is. With nothing to ground, no inversion runs."""
    pixels = read_image(image)
    mentions = read_mentions(report)
    kept: dict[str, Mention] = {}
    for mention in mentions:
        if mention.kept:
            first = kept.setdefault(mention.text.lower(), mention)
            if mention.status == "positive" and first.status != "positive":
                kept[mention.text.lower()] = replace(first, status="positive")
    dropped = [mention for mention in mentions if not mention.kept]
    if not kept:
        return ReportGrounding(findings=[], dropped=dropped, report=report)
    results = grounder.ground(pixels, [mention.text for mention in kept.values()])
    findings = [GroundedFinding(number, m.text, m.status, result, m.label, m.sentence, m.section)
                for number, (m, result) in enumerate(zip(kept.values(), results), start=1)]
    return ReportGrounding(findings=findings, dropped=dropped, report=report)


def ground_phrases(grounder: Grounder, image: ImageInput, phrases: Sequence[str]) -> ReportGrounding:
    """Phrases grounded as given (no negation reading), in the same form as a report's findings."""
    unique = list(dict.fromkeys(phrases))
    results = grounder.ground(image, unique)
    findings = [GroundedFinding(number, phrase, TYPED_PHRASE, result)
                for number, (phrase, result) in enumerate(zip(unique, results), start=1)]
    return ReportGrounding(findings=findings, dropped=[])


def write_outputs(folder: Path, image_name: str | Path, pixels: np.ndarray, grounding: ReportGrounding,
                  record: dict[str, Any]) -> list[Path]:
    """Per finding its heatmap (.npy, original pixels, NaN outside the crop); one overlay of all findings (.png, one
    colour each, legend) and one JSON of everything (``record`` first: image, model, preset). Returns the paths."""
    from medground.viz import save_findings_overlay

    folder = Path(folder)
    what = grounding.report if grounding.report is not None else "\n".join(f.text for f in grounding.findings)
    kind = "report" if grounding.report is not None else "phrases"
    settings = json.dumps(record, sort_keys=True, default=str)
    base = output_path(folder, output_name(image_name, f"{kind}\n{what}", settings))
    document = {**record, **grounding.to_json()}
    written = []
    for finding, row in zip(grounding.findings, document["findings"]):
        path = output_path(folder, f"{output_name(image_name, finding.text, settings)}.npy")
        np.save(path, finding.result.heatmap)
        row["heatmap_file"] = path.name
        written.append(path)
    if grounding.findings:
        written.insert(0, save_findings_overlay(output_path(folder, base.name + ".png"), pixels, grounding.findings))
    json_path = output_path(folder, base.name + ".json")
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    return [json_path, *written]
