"""``medground demo``: ground phantoms with a shipped toy model, draw them, and score the model against baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medground.backbones.model_dir import load_model
from medground.grounder import Grounder
from medground.outputs import output_name
from medground.toy.evaluate import evaluate_toy, format_table
from medground.toy.phantoms import generate_phantom
from medground.viz import save_contact_sheet, save_overlay


def run_demo(out: Path, model_name: str = "toy", seed: int = 7_000_000, n: int = 6, n_eval: int = 24,
             device: str = "cpu") -> dict[str, Any]:
    """Overlays and a contact sheet of ``n`` phantoms with findings in ``out``; returns the metrics report."""
    model = load_model(model_name, device=device)
    phantoms = [p for p in (generate_phantom(seed + i) for i in range(3 * n)) if p.findings][:n]
    results = Grounder(model).ground_many([(p.image, [f.phrase for f in p.findings]) for p in phantoms])
    panels = []
    for phantom, phantom_results in zip(phantoms, results):
        for finding, result in zip(phantom.findings, phantom_results):
            name = output_name(f"phantom{phantom.seed}", finding.phrase)
            save_overlay(out / f"{name}.png", phantom.image, result.heatmap, finding.phrase, result.boxes,
                         [finding.box])
            np.save(out / f"{name}.npy", result.heatmap)
            panels.append({"image": phantom.image, "heatmap": result.heatmap, "title": finding.phrase,
                           "predicted": result.boxes, "truth": [finding.box]})
    sheet = save_contact_sheet(out / "contact_sheet.png", panels)
    report = evaluate_toy(model, seed, n_eval, methods=("ldm", "uniform", "centre", "prior"))
    report["summary_line"] = (f"grounded {len(panels)} phrases on {len(phantoms)} phantoms with model {model.name!r}; "
                              f"overlays in {out} (green: truth box, red dashed: predicted, colour: heatmap); "
                              f"sheet: {sheet}")
    report["table"] = format_table(report)
    return report
