"""The evaluation harness: dataset readers, baselines on real NIH data, resumable runs, comparison."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys

import numpy as np
import pytest
import torch

from medground.cli import main
from medground.datasets import load_dataset
from medground.datasets.nih import nih_phrase
from medground.evaluate import RunDirError, compare_runs, run_evaluation
from medground.methods import CentreMethod, UniformMethod


def official_style_metrics(heatmap: np.ndarray, boxes) -> dict[str, float]:
    """An independent float32 torch transcription of the official per-sample metrics (integer-rounded boxes)."""
    values = torch.from_numpy(heatmap.astype(np.float32))
    int_boxes = [tuple(math.floor(v + 0.5) for v in (x, y, x + w, y + h)) for x, y, w, h in boxes]
    target = torch.zeros_like(values, dtype=torch.bool)
    for x0, y0, x1, y1 in int_boxes:
        target[y0:y1, x0:x1] = True
    blank, ratios = values.clone(), []
    for x0, y0, x1, y1 in int_boxes:
        inside = blank[y0:y1, x0:x1]
        mu_in, var_in = inside.nanmean(), (inside - inside.nanmean()).square().nanmean()
        blank[y0:y1, x0:x1] = float("nan")
        mu_out, var_out = blank.nanmean(), (blank - blank.nanmean()).square().nanmean()
        ratios.append(torch.nan_to_num((mu_in - mu_out).abs() / torch.sqrt(var_in + var_out)).item())
    ious = [((values > t) & target).sum().item() / ((values > t) | target).sum().item() for t in (.1, .2, .3, .4, .5)]
    thresholds = torch.linspace(0, 1, 5)
    predicted = values.flatten() >= thresholds[:, None]
    tp = predicted[:, target.flatten()].sum(1).flip(0).double()
    fp = predicted[:, ~target.flatten()].sum(1).flip(0).double()
    tp, fp = torch.cat([torch.zeros(1, dtype=torch.double), tp]), torch.cat([torch.zeros(1, dtype=torch.double), fp])
    factor = tp[-1] * fp[-1]
    area = 0.5 if factor == 0 else (torch.trapezoid(tp, fp) / factor).item()
    return {"cnr": sum(ratios) / len(ratios), "miou": float(np.mean(ious)), "auroc": area}


@pytest.mark.parametrize("method", [UniformMethod(), CentreMethod()], ids=["uniform", "centre"])
def test_nih_baselines_match_an_independent_computation(nih_root, tmp_path, method):
    load = load_dataset("nih", nih_root)
    assert len(load.samples) == 46 and not load.skipped_samples
    assert {s.phrase for s in load.samples if s.category == "Effusion"} == {nih_phrase("Effusion")}
    summary = run_evaluation(load, method, tmp_path / "run", settings={}, progress=False)
    per_class: dict[str, list[dict]] = {}
    for sample in load.samples:
        heatmap = method.heatmaps([sample])[0]
        per_class.setdefault(sample.category, []).append(official_style_metrics(heatmap, sample.boxes))
    for category, rows in per_class.items():
        for metric in ("cnr", "miou", "auroc"):
            expected = np.mean([r[metric] for r in rows])
            assert summary["classes"][category][metric]["mean"] == pytest.approx(expected, abs=1e-5)
            assert summary["classes"][category]["n"] == len(rows)
    class_means = [np.mean([r["miou"] for r in rows]) for rows in per_class.values()]
    assert summary["overall"]["miou"]["mean"] == pytest.approx(np.mean(class_means), abs=1e-5)
    assert summary["overall"]["miou"]["std"] == pytest.approx(np.std(class_means), abs=1e-5)
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 46 and set(json.loads(lines[0])) >= {"id", "category", "phrase", "cnr", "cnr_signed", "miou",
                                                             "auroc", "auroc_exact", "seconds"}
    assert (tmp_path / "run" / "contact_sheet.png").stat().st_size > 10_000


def test_ms_cxr_reader_merges_duplicates_and_filters_the_crop(tmp_path):
    header = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
    rows = [
        "d1,Pneumonia,left lower lobe pneumonia,files/p1/s1/d1.jpg,600,800,200,150,2000,1000",  # kept
        "d1,Pneumonia,left lower lobe pneumonia,files/p1/s1/d1.jpg,1200,700,100,100,2000,1000",
        "d1,Pneumonia,left lower lobe pneumonia,files/p1/s1/d1.jpg,5,5,40,40,2000,1000",  # cropped away
        "d1,Cardiomegaly,enlarged heart,files/p1/s1/d1.jpg,800,400,400,300,2000,1000",
        "d2,Pneumothorax,apical pneumothorax,files/p2/s2/d2.jpg,10,10,100,100,2000,1000",  # fully cropped
    ]
    (tmp_path / "ms.csv").write_text(header + "\n".join(rows) + "\n")
    load = load_dataset("ms-cxr", tmp_path, tmp_path / "ms.csv")
    assert [(s.category, len(s.boxes)) for s in load.samples] == [("Pneumonia", 2), ("Cardiomegaly", 1)]
    assert load.samples[0].boxes == ((600.0, 800.0, 200.0, 150.0), (1200.0, 700.0, 100.0, 100.0))
    assert load.samples[0].image_path == tmp_path / "files/p1/s1/d1.jpg"
    assert len(load.skipped_samples) == 1 and load.dropped_boxes == 2
    assert len({s.id for s in load.samples}) == 2


class Interrupted(Exception):
    pass


class FailingAfter(CentreMethod):
    """The centre prior that dies after ``limit`` samples, like a run killed midway."""

    def __init__(self, limit: int) -> None:
        self.limit, self.seen = limit, 0

    def heatmaps(self, samples):
        self.seen += len(samples)
        if self.seen > self.limit:
            raise Interrupted
        return super().heatmaps(samples)


def test_resume_after_interruption_gives_the_same_summary(nih_root, tmp_path):
    load = load_dataset("nih", nih_root)
    whole = run_evaluation(load, CentreMethod(), tmp_path / "whole", settings={}, progress=False)
    with pytest.raises(Interrupted):
        run_evaluation(load, FailingAfter(20), tmp_path / "cut", settings={}, progress=False)
    partial = (tmp_path / "cut" / "samples.jsonl").read_text()
    assert 10 <= len(partial.splitlines()) <= 20
    with (tmp_path / "cut" / "samples.jsonl").open("a") as handle:
        handle.write('{"id": "torn li')  # a crash in the middle of a write
    with pytest.raises(RunDirError, match="--resume"):
        run_evaluation(load, CentreMethod(), tmp_path / "cut", settings={}, progress=False)
    resumed = run_evaluation(load, CentreMethod(), tmp_path / "cut", settings={}, resume=True, progress=False)
    ids = [json.loads(line)["id"] for line in (tmp_path / "cut" / "samples.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 46
    assert resumed == whole
    assert (tmp_path / "cut" / "summary.json").read_text() == (tmp_path / "whole" / "summary.json").read_text()


def test_eval_and_compare_commands(nih_root, tmp_path, capsys):
    for method in ("uniform", "centre"):
        assert main(["eval", "--dataset", "nih", "--root", str(nih_root), "--method", method,
                     "--out", str(tmp_path / method)]) == 0
    assert "mean of classes" in (tmp_path / "centre" / "summary.md").read_text()
    assert (tmp_path / "centre" / "summary.csv").read_text().startswith("class,n,cnr_mean")
    table = compare_runs([tmp_path / "uniform", tmp_path / "centre"])
    assert "Compared on the 46 samples" in table and "uniform@uniform" in table
    assert main(["compare", str(tmp_path / "uniform"), str(tmp_path / "centre")]) == 0
    assert "centre@centre" in capsys.readouterr().out


def test_vindr_reader_merges_radiologists_and_keeps_ms_cxr_classes(tmp_path):
    from PIL import Image

    (tmp_path / "test").mkdir()
    Image.fromarray(np.zeros((600, 800), dtype=np.uint8)).save(tmp_path / "test" / "img1.png")
    rows = ["image_id,rad_id,class_name,x_min,y_min,x_max,y_max",
            "img1,R8,Pleural effusion,300,300,400,450",
            "img1,R9,Pleural effusion,310,290,420,440",
            "img1,R9,Aortic enlargement,380,200,450,260",  # not an MS-CXR class
            "img1,R10,No finding,,,,"]
    (tmp_path / "annotations_test.csv").write_text("\n".join(rows) + "\n")
    load = load_dataset("vindr", tmp_path)
    assert len(load.samples) == 1
    sample = load.samples[0]
    assert (sample.category, sample.phrase) == ("Pleural Effusion", "The patient has pleural effusion")
    assert (sample.width, sample.height) == (800, 600)
    assert sample.boxes == ((300.0, 300.0, 100.0, 150.0), (310.0, 290.0, 110.0, 150.0))


@pytest.mark.skipif(importlib.util.find_spec("health_multimodal") is not None,
                    reason="hi-ml-multimodal is installed here; tests/test_biovil.py covers the baselines")
def test_biovil_without_the_extra_says_how_to_install_it():
    from medground.errors import ModelLoadError
    from medground.methods import make_method

    with pytest.raises(ModelLoadError, match=r"pip install 'medground\[baselines\]'"):
        make_method("biovil-t")


def test_biovil_with_a_torchvision_for_another_torch_says_so(tmp_path, monkeypatch):
    """PyPI's torchvision beside a CPU torch fails with a RuntimeError while hi-ml-multimodal imports it."""
    from medground.errors import ModelLoadError
    from medground.methods import make_method

    fake = tmp_path / "health_multimodal"
    (fake / "image").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "image" / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n.startswith("health_multimodal")]:
        monkeypatch.delitem(sys.modules, name)
    expected = re.escape(f"torchvision does not import beside torch {torch.__version__}")
    with pytest.raises(ModelLoadError, match=expected):
        make_method("biovil")
