"""The plain records medground returns: boxes, one phrase's grounding, a report's findings and their colours.

They sit below every feature, so the writers (``outputs``), the pictures (``viz``), the web app and the batch store
all read the same records and none of them needs to know where a record came from.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medground.config import GroundingConfig


Box = tuple[float, float, float, float]
"""A box as datasets give it: (x, y, w, h) in pixels of the image."""


@dataclass(frozen=True)
class GroundedBox:
    """A predicted box (x, y, w, h in pixels) around one connected region of the mask."""

    x: int
    y: int
    w: int
    h: int
    score: float
    """Mean heatmap value inside the region."""

    def to_dict(self) -> dict:
        """The box as a JSON object, as output records and batch rows store it."""
        return asdict(self)


@dataclass
class GroundingResult:
    """Where one phrase sits in one image."""

    phrase: str
    heatmap: np.ndarray
    """float32 (H, W) in original pixels, NaN where the centre crop discarded the image."""
    mask: np.ndarray
    """bool (H, W): the thresholded foreground."""
    boxes: list[GroundedBox]
    config: GroundingConfig
    model_heatmap: np.ndarray
    """float32 (S, S): the final map in the model's square input."""
    flat: bool = False
    """The attention did not vary over the image: the map is all zeros and says nothing about where the phrase is."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds: ``inversion`` and ``conditional`` (shared by the phrases of one call), ``postprocess`` (this one)."""
    unet_evaluations: dict[str, int] = field(default_factory=dict)
    """UNet evaluations (batch elements) of the call that made this result: ``unconditional`` and ``conditional``."""
    recorded_attention_bytes: int = 0
    """Most memory the call held for recorded attention."""

    def where(self) -> str:
        """One line on where the phrase is: the best box, or why there is none."""
        if self.flat:
            return "flat map: the attention did not vary over the image, so no region is located"
        if not self.boxes:
            return "no region"
        top = self.boxes[0]
        return f"top box x={top.x} y={top.y} w={top.w} h={top.h} score={top.score:.2f}"

    def to_json(self) -> dict[str, Any]:
        """What a phrase's JSON file records; the arrays are left out (the heatmap has its own ``.npy``)."""
        return {
            "phrase": self.phrase,
            "image_size": {"width": int(self.heatmap.shape[1]), "height": int(self.heatmap.shape[0])},
            "boxes": [box.to_dict() for box in self.boxes],
            "flat": self.flat,
            "timings_s": self.timings,
            "unet_evaluations": self.unet_evaluations,
            "recorded_attention_bytes": self.recorded_attention_bytes,
            "config": self.config.to_dict(),
        }


@dataclass(frozen=True)
class Mention:
    """One finding mention in a report, as the report reader found it."""

    text: str
    """The finding as written, whitespace collapsed, e.g. "small left pleural effusion"; this is what gets grounded."""
    label: str
    """The finding it names, e.g. "pleural effusion"."""
    status: str
    """positive, uncertain, negated, hypothetical, historical or family."""
    sentence: str
    section: str | None
    """The report section (findings, impression, indication, ...) or None before the first header."""
    start: int
    """Character offset of the mention in the report."""
    reason: str = ""
    """Why the mention is not grounded (its status, or its section); empty when it is."""

    @property
    def kept(self) -> bool:
        """Whether the mention asserts something visible in the image, so it is grounded."""
        return not self.reason

    def to_json(self) -> dict[str, Any]:
        """Every field, as a report grounding's JSON lists a mention that was not grounded."""
        return asdict(self)


PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324",
           "#800000")
"""The first ten findings' colours, chosen to be distinct on gray radiographs."""
TYPED_PHRASE = "typed"
"""The status of a phrase grounded as given, not read from a report."""


def finding_colour(number: int) -> str:
    """The colour of finding ``number`` (1-based): the palette, then hues a golden angle apart, so no two findings
    share a colour however many there are."""
    if number <= len(PALETTE):
        return PALETTE[number - 1]
    hue = ((number - len(PALETTE)) * 0.6180339887498949) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.9 - 0.25 * ((number // 7) % 2))
    return f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"


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
        """The finding's colour (``finding_colour``): the same in the overlay, the legend and the boxes table."""
        return finding_colour(self.number)

    def to_json(self) -> dict[str, Any]:
        """The finding as a report grounding's JSON lists it: boxes, not arrays."""
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
        """The JSON of the grounding: findings, what was not grounded and why, and what the findings share (image
        size, timings, UNet evaluations, config; taken from the first finding)."""
        first = self.findings[0].result if self.findings else None
        return {
            "report": self.report,
            "findings": [finding.to_json() for finding in self.findings],
            "not_grounded": [mention.to_json() for mention in self.dropped],
            "message": self.message,
            "image_size": {"width": int(first.heatmap.shape[1]), "height": int(first.heatmap.shape[0])}
            if first else None,
            "timings_s": first.timings if first else {},
            "unet_evaluations": first.unet_evaluations if first else {},
            "config": first.config.to_dict() if first else None,
        }
