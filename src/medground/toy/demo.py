"""``medground demo``: ground phantoms with a shipped toy model, draw them, and score the model against baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medground.datasets.phantoms import generate_phantom
from medground.grounder import Grounder
from medground.loading import load_model
from medground.outputs import GroundingFiles, grounding_settings, write_atomic
from medground.toy import DEMO_SEED
from medground.toy.evaluate import evaluate_toy, format_table
from medground.viz import contact_sheet_png


def run_demo(out: Path, model_name: str = "toy", seed: int = DEMO_SEED, n: int = 6, n_eval: int = 24,
             device: str = "cpu") -> dict[str, Any]:
    """Overlays and a contact sheet of ``n`` phantoms with findings in ``out``; returns the metrics report.

    Args:
        out: the output folder (per phrase: heatmap .npy, overlay .png with the truth box, JSON; contact_sheet.png).
        model_name: a toy model's name or folder.
        seed: the first phantom seed drawn.
        n: phantoms drawn (those with findings).
        n_eval: phantoms in the metrics table.
        device: where the model runs.
    """
    model = load_model(model_name, device=device)
    grounder = Grounder(model)
    phantoms = [p for p in (generate_phantom(seed + i) for i in range(3 * n)) if p.findings][:n]
    results = grounder.ground_many([(p.image, [f.phrase for f in p.findings]) for p in phantoms])
    settings = grounding_settings(model_name, grounder.config)
    panels = []
    for phantom, phantom_results in zip(phantoms, results):
        files = GroundingFiles(out, f"phantom{phantom.seed}", settings)
        for finding, result in zip(phantom.findings, phantom_results):
            files.phrase(phantom.image, result, {"image": f"phantom{phantom.seed}", "model": model_name,
                                                 "preset": "paper", "truth": [list(finding.box)]}, [finding.box])
            panels.append({"image": phantom.image, "heatmap": result.heatmap, "title": finding.phrase,
                           "predicted": result.boxes, "truth": [finding.box]})
    sheet = write_atomic(Path(out) / "contact_sheet.png", contact_sheet_png(panels))
    report = evaluate_toy(model, seed, n_eval, methods=("ldm", "uniform", "centre", "prior"))
    report["summary_line"] = (f"grounded {len(panels)} phrases on {len(phantoms)} phantoms with model {model.name!r}; "
                              f"overlays in {out} (green: truth box, red dashed: predicted, colour: heatmap); "
                              f"sheet: {sheet}")
    report["table"] = format_table(report)
    return report
