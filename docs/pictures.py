"""Draw the documentation's pictures from the shipped toy model and the ablation's results.

    .venv/bin/python docs/pictures.py            # writes docs/overlay.png, docs/report-overlay.png, docs/ablation.png

- overlay.png: ``medground ground`` on ``cxr.png`` with the shipped ``toy`` model and the ``paper`` preset, both
  phrases of the phantom, drawn as the demo draws them (truth box green, predicted boxes red).
- report-overlay.png: ``medground.reports.ground_report`` on the same image and ``REPORT``, drawn as
  ``medground report`` draws it.
- ablation.png: docs/ablation-results.json (written by benchmarks/ablation.py), pooled over the two held-out seeds
  as docs/ablation.md's tables are.

``cxr.png`` is the first phantom of the demo's held-out seeds (``medground.toy.DEMO_SEED``, 7,000,000; not chosen
for looking good), enlarged 4x to 256 px; the documentation's examples are tested on the same file
(tests/test_docs_examples.py imports ``write_phantom_png`` from here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
PHANTOM_SEED = 7_000_000
SCALE = 4
REPORT = "FINDINGS: Right lateral pneumothorax. Possible left lower zone nodule. No pleural effusion."
METRICS = (("auroc", "AUROC (binned)"), ("miou", "mIoU"), ("discrimination", "discrimination"))


def write_phantom_png(path: Path, seed: int = PHANTOM_SEED) -> list[str]:
    """The phantom of ``seed`` enlarged ``SCALE`` times (bilinear), as an 8-bit PNG; returns its finding phrases."""
    from PIL import Image

    from medground.datasets.phantoms import generate_phantom

    phantom = generate_phantom(seed)
    pixels = Image.fromarray(np.round(phantom.image * 255).astype(np.uint8))
    side = pixels.width * SCALE
    pixels.resize((side, side), Image.BILINEAR).save(path)
    return [finding.phrase for finding in phantom.findings]


def draw_overlays(folder: Path) -> list[Path]:
    """overlay.png and report-overlay.png from the toy model on the phantom."""
    from medground import Grounder, load_model
    from medground.datasets.phantoms import generate_phantom
    from medground.images import read_image
    from medground.reports import ground_report
    from medground.viz import contact_sheet_png, findings_png

    image_path = folder / "cxr.png"
    phrases = write_phantom_png(image_path)
    pixels = read_image(image_path)
    grounder = Grounder(load_model("toy"), "paper")
    results = grounder.ground(image_path, phrases)
    truth = [tuple(v * SCALE for v in finding.box) for finding in generate_phantom(PHANTOM_SEED).findings]
    panels = [{"image": pixels, "heatmap": result.heatmap, "title": result.phrase, "predicted": result.boxes,
               "truth": [box]} for result, box in zip(results, truth)]
    overlay = DOCS / "overlay.png"
    overlay.write_bytes(contact_sheet_png(panels, columns=len(panels)))
    report = DOCS / "report-overlay.png"
    report.write_bytes(findings_png(pixels, ground_report(grounder, image_path, REPORT).findings))
    return [overlay, report]


def pooled(rows: list[dict]) -> dict[str, float]:
    """Seeds together: metrics weighted by phrases, discrimination by pairs (as docs/ablation.md's tables)."""
    phrases = sum(row["n_phrases"] for row in rows)
    out = {key: sum(row[key] * row["n_phrases"] for row in rows) / phrases for key in ("auroc", "miou")}
    pairs = sum(row["pairs"] for row in rows)
    out["discrimination"] = sum(row["discrimination"] * row["pairs"] for row in rows) / pairs
    out["unet"] = sum(row["unet_evaluations_per_phrase"] * row["n_phrases"] for row in rows) / phrases
    return out


def draw_ablation(results: Path = DOCS / "ablation-results.json") -> Path:
    """ablation.png: every recipe's pooled AUROC, mIoU and discrimination for both toys, ``paper`` as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(results.read_text())
    labels = list(dict.fromkeys(row["label"] for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    table = {(model, label): pooled([r for r in rows if r["model"] == model and r["label"] == label])
             for model in models for label in labels}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 4.6), sharey=True)
    y = np.arange(len(labels))
    for ax, (key, title) in zip(axes, METRICS):
        for offset, (model, colour) in zip((-0.15, 0.15), zip(models, ("tab:blue", "tab:orange"))):
            values = [table[model, label][key] for label in labels]
            ax.scatter(values, y + offset, color=colour, s=22, label=model, zorder=3)
            ax.axvline(table[model, "paper"][key], color=colour, lw=0.8, ls=":", zorder=2)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", lw=0.4, alpha=0.6)
        ax.tick_params(labelsize=8)
    short = [label.split(" (")[0] for label in labels]
    evals = [f"{name}  [{table[models[0], label]['unet']:.0f} / {table[models[-1], label]['unet']:.0f}]"
             for name, label in zip(short, labels)]
    axes[0].set_yticks(y, evals)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Read-out recipes on held-out phantoms (pooled over 2 x 40 phantoms; dotted: paper; "
                 "[UNet evaluations per phrase, toy / toy-sd])", fontsize=9)
    fig.tight_layout()
    path = DOCS / "ablation.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        written = [*draw_overlays(Path(folder)), draw_ablation()]
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)", file=sys.stderr)


if __name__ == "__main__":
    main()
