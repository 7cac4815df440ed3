"""The toy world's data: deterministic chest-like phantoms with findings, report-like captions and boxes, and the
phantoms as a dataset (one sample per finding, category = the finding's kind).

Conventions: images are 64 x 64 float32 in [0, 1], bright = dense. Sides follow the patient:
patient-left is image-right. Finding positions are spread over both lungs and all zones so that a
position prior alone cannot locate them; only image + text can. The toy models are trained on them
(``medground.toy.train``), and ``read_phantoms`` serves seeds ``seed .. seed + n - 1`` to the evaluation harness;
phantoms without findings contribute nothing, and no file is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medground.datasets.base import DatasetLoad, SampleRows, assemble
from medground.errors import DatasetError

SIZE = 64
TRAINING_SEEDS = range(0, 200_000)
"""Seeds the toys' training may draw from (both shipped toys used 0..63999); evaluation seeds stay outside."""
VALIDATION_SEEDS = range(5_000_000, 5_000_200)
"""Seeds for choosing a toy model's checkpoint and read-out and for the position prior; never for evaluation."""
HELD_OUT_SEED = 123_456_789
"""The first seed evaluations use by default: far from the training and validation seeds."""
FINDING_KINDS = ("opacity", "nodule", "effusion", "pneumothorax", "cardiomegaly")
ZONES = ("upper", "mid", "lower")


@dataclass(frozen=True)
class Finding:
    """One finding drawn into a phantom: its kind, side, caption phrase and box."""

    kind: str
    side: str | None
    """``left``/``right`` in the patient's convention; None for cardiomegaly."""
    phrase: str
    box: tuple[float, float, float, float]
    """(x, y, w, h) in pixels."""


@dataclass(frozen=True)
class Phantom:
    """A generated image with its findings and the caption the toys are trained on."""

    seed: int
    image: np.ndarray
    findings: tuple[Finding, ...]
    caption: str


@dataclass(frozen=True)
class _Lung:
    cx: float
    cy: float
    rx: float
    ry: float

    def mask(self, xx: np.ndarray, yy: np.ndarray, shrink: float = 1.0) -> np.ndarray:
        return ((xx - self.cx) / (self.rx * shrink)) ** 2 + ((yy - self.cy) / (self.ry * shrink)) ** 2 <= 1.0


def generate_phantom(seed: int) -> Phantom:
    """One phantom; the same seed always gives the same image, findings and caption."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    image = np.full((SIZE, SIZE), 0.05, dtype=np.float32)
    body = ((xx - 32) / 30) ** 2 + ((yy - 34) / 32) ** 2 <= 1.0
    image[body] = 0.55
    lungs = {
        "right": _Lung(19 + rng.uniform(-1.5, 1.5), 30 + rng.uniform(-1.5, 1.5), 10 + rng.uniform(-1, 1.5),
                       20 + rng.uniform(-2, 2)),
        "left": _Lung(45 + rng.uniform(-1.5, 1.5), 30 + rng.uniform(-1.5, 1.5), 10 + rng.uniform(-1, 1.5),
                      20 + rng.uniform(-2, 2)),
    }
    lung_masks = {side: lung.mask(xx, yy) for side, lung in lungs.items()}
    ribs = 0.07 * (np.sin(2 * np.pi * (yy + 0.02 * (xx - 32) ** 2 + rng.uniform(0, 7)) / 7.0) > 0.55)
    for mask in lung_masks.values():
        image[mask] = 0.18 + ribs[mask]
    image[(np.abs(xx - 32) < 4.5) & (yy > 6) & body] = 0.7

    kinds = _draw_kinds(rng)
    heart_scale = rng.uniform(1.45, 1.7) if "cardiomegaly" in kinds else rng.uniform(0.9, 1.05)
    heart = (36 + rng.uniform(-1.5, 1.5), 45 + rng.uniform(-1.5, 1.5), 8.5 * heart_scale, 6.5 * min(heart_scale, 1.3))
    heart_mask = ((xx - heart[0]) / heart[2]) ** 2 + ((yy - heart[1]) / heart[3]) ** 2 <= 1.0
    image[heart_mask] = 0.72

    findings = []
    for kind in kinds:
        findings.append(_add_finding(kind, rng, image, xx, yy, lungs, lung_masks, heart))
    image = ndimage.gaussian_filter(image, 0.7)
    image = image + rng.normal(0, 0.025, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    phrases = [f.phrase for f in findings]
    caption = ". ".join(phrases) if phrases else "no acute findings"
    return Phantom(seed=seed, image=image, findings=tuple(findings), caption=caption)


def _draw_kinds(rng: np.random.Generator) -> list[str]:
    count = rng.choice([0, 1, 2], p=[0.12, 0.38, 0.5])
    return [str(k) for k in rng.choice(FINDING_KINDS, size=count, replace=False)]


def _zone_of(y: float, lung: _Lung) -> str:
    rel = (y - (lung.cy - lung.ry)) / (2 * lung.ry)
    return ZONES[min(int(rel * 3), 2)]


def _point_in_lung(rng: np.random.Generator, lung: _Lung, margin: float) -> tuple[float, float]:
    while True:
        x, y = rng.uniform(-1, 1, size=2)
        if x * x + y * y <= 1.0:
            return lung.cx + x * (lung.rx - margin), lung.cy + y * (lung.ry - margin)


def _add_finding(kind, rng, image, xx, yy, lungs, lung_masks, heart) -> Finding:
    side = "left" if rng.random() < 0.5 else "right"
    lung, lung_mask = lungs[side], lung_masks[side]
    if kind == "opacity":
        cx, cy = _point_in_lung(rng, lung, 3.0)
        sigma = rng.uniform(2.8, 4.2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        image += 0.38 * blob * (lung_mask | (blob > 0.3))
        r = 2.0 * sigma
        return Finding(kind, side, f"opacity in the {side} {_zone_of(cy, lung)} zone", (cx - r, cy - r, 2 * r, 2 * r))
    if kind == "nodule":
        cx, cy = _point_in_lung(rng, lung, 3.0)
        radius = rng.uniform(1.8, 2.8)
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        image[disk] = 0.85
        r = radius + 1
        return Finding(kind, side, f"{side} {_zone_of(cy, lung)} zone nodule", (cx - r, cy - r, 2 * r, 2 * r))
    if kind == "effusion":
        large = rng.random() < 0.5
        depth = rng.uniform(0.45, 0.75) if large else rng.uniform(0.2, 0.38)
        level = lung.cy + lung.ry - depth * 2 * lung.ry
        lateral = (xx - lung.cx) * (1 if side == "left" else -1) / lung.rx
        fluid = lung_mask & (yy >= level - 3.0 * np.clip(lateral, 0, 1))
        image[fluid] = 0.66
        rows, cols = np.nonzero(fluid)
        box = (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
        size = "large" if large else "small"
        return Finding(kind, side, f"{size} {side} pleural effusion", tuple(float(v) for v in box))
    if kind == "pneumothorax":
        apical = rng.random() < 0.5
        inner = _Lung(lung.cx + (0 if apical else (-2.5 if side == "left" else 2.5)),
                      lung.cy + (4.0 if apical else 0.0), lung.rx * (0.8 if apical else 0.6), lung.ry * 0.85)
        free_air = lung_mask & ~inner.mask(xx, yy)
        if apical:
            free_air &= yy < lung.cy
        else:
            free_air &= ((xx - lung.cx) * (1 if side == "left" else -1)) > 0
        edge = free_air & ~ndimage.binary_erosion(free_air | ~lung_mask, iterations=1) & inner.mask(xx, yy, 1.15)
        image[free_air] = 0.02
        image[edge] = 0.45
        rows, cols = np.nonzero(free_air)
        box = (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
        where = "apical" if apical else "lateral"
        return Finding(kind, side, f"{side} {where} pneumothorax", tuple(float(v) for v in box))
    cx, cy, rx, ry = heart
    degree = "moderate" if rx > 13.5 else "mild"
    return Finding(kind, None, f"{degree} cardiomegaly", (cx - rx, cy - ry, 2 * rx, 2 * ry))


def phantom_vocabulary() -> list[str]:
    """Every word a phantom caption can contain (for the tokenizer)."""
    words = {"opacity", "in", "the", "zone", "nodule", "pleural", "effusion", "pneumothorax", "cardiomegaly",
             "left", "right", "upper", "mid", "lower", "small", "large", "apical", "lateral", "mild", "moderate",
             "no", "acute", "findings"}
    return sorted(words)


def read_phantoms(seed: int = 0, n: int = 40) -> DatasetLoad:
    """Phantoms ``seed .. seed + n - 1`` as a dataset, one sample per finding; a seed below 0, an ``n`` below 1, or
    phantoms without a single finding (nothing to evaluate) is a DatasetError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"the number of phantoms must be a positive integer, got {n!r}")
    groups = []
    for offset in range(n):
        phantom = generate_phantom(seed + offset)
        for number, finding in enumerate(phantom.findings):
            group = SampleRows(phantom.image, f"phantom-{phantom.seed}", finding.phrase, finding.kind)
            group.boxes.append(finding.box)
            group.rows.append(f"phantom {phantom.seed} finding {number}")
            groups.append(group)
    if not groups:
        raise DatasetError(f"phantoms {seed}..{seed + n - 1} have no finding, so there is no sample to evaluate; take "
                           "more phantoms (a larger --n)")
    return assemble("phantoms", groups, lambda _group: (SIZE, SIZE))
