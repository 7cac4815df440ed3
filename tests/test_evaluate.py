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
from PIL import Image

from medground.cli import main
from medground.datasets import load_dataset
from medground.datasets.nih import nih_phrase
from medground.errors import RunDirError
from medground.evaluate.report import compare_runs
from medground.evaluate.runner import plan_groups, run_evaluation
from medground.evaluate.store import RunWriter
from medground.grounder import resolve_config
from medground.loading import load_model
from medground.methods import MethodOptions, make_method
from medground.methods.priors import CentreMethod, UniformMethod


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


def check_against_independent_metrics(load, method, summary) -> None:
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


@pytest.mark.parametrize("method", [UniformMethod(), CentreMethod()], ids=["uniform", "centre"])
def test_nih_baselines_match_an_independent_computation(nih_root, tmp_path, method):
    load = load_dataset("nih", nih_root)
    assert len(load.samples) == 13 and len({s.category for s in load.samples}) == 8 and not load.skipped_samples
    assert {s.phrase for s in load.samples if s.category == "Effusion"} == {nih_phrase("Effusion")}
    summary = run_evaluation(load, method, RunWriter(tmp_path / "run"), {"method": method.name}, progress=False)
    check_against_independent_metrics(load, method, summary)
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 13 and set(json.loads(lines[0])) >= {"id", "category", "phrase", "cnr", "cnr_signed", "miou",
                                                             "auroc", "auroc_exact", "seconds", "flat"}
    assert (tmp_path / "run" / "contact_sheet.png").stat().st_size > 10_000
    assert summary["discrimination_samples"] == 8  # four images carry two findings each


def test_shared_nih_centre_baseline(shared_nih_root, tmp_path):
    """The README's centre row on the 46 shared NIH samples (an extra: only where the shared folder exists)."""
    load = load_dataset("nih", shared_nih_root)
    assert len(load.samples) == 46
    method = CentreMethod()
    summary = run_evaluation(load, method, RunWriter(tmp_path / "run"), {"method": "centre"}, progress=False)
    check_against_independent_metrics(load, method, summary)
    assert summary["overall"]["miou"]["mean"] == pytest.approx(0.115, abs=5e-4)


def write_image(path, width, height) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(width * height) % 251).reshape(height, width).astype(np.uint8)).save(path)


def test_ms_cxr_reader_merges_boxes_and_filters_the_crop(tmp_path):
    write_image(tmp_path / "files/p1/s1/d1.jpg", 2000, 1000)
    write_image(tmp_path / "files/p2/s2/d2.jpg", 2000, 1000)
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
    assert load.samples[0].image == tmp_path / "files/p1/s1/d1.jpg"
    assert len(load.skipped_samples) == 1 and load.dropped_boxes == 2
    assert len({s.id for s in load.samples}) == 2


def test_groups_keep_an_image_whole_and_follow_dataset_order(nih_root):
    load = load_dataset("nih", nih_root)
    first_seen = {}
    for sample in load.samples:
        first_seen.setdefault(sample.image_key, len(first_seen))
    groups = plan_groups(load.samples, images_per_group=2)
    expected = sorted(load.samples, key=lambda s: first_seen[s.image_key])  # stable: dataset order within an image
    assert [s.id for group in groups for s in group] == [s.id for s in expected]
    assert all(len({s.image_key for s in group}) <= 2 for group in groups)
    for key in first_seen:
        assert sum(any(s.image_key == key for s in group) for group in groups) == 1


class Interrupted(Exception):
    pass


class FailingAfter:
    """A method that dies once it has been asked for ``limit`` samples, like a run killed midway."""

    def __init__(self, method, limit: int) -> None:
        self.method, self.limit, self.seen, self.name = method, limit, 0, method.name

    def heatmaps(self, samples):
        self.seen += len(samples)
        if self.seen > self.limit:
            raise Interrupted
        return self.method.heatmaps(samples)


def test_resume_after_interruption_gives_the_same_records_and_summary(tmp_path):
    """With the LDM, whose maps depend at 1e-7 on what shares their batch: groups are fixed before the run, and a
    resumed group is recomputed whole, so the records and summary.json are identical to an uninterrupted run."""
    load = load_dataset("phantoms", seed=8_200_000, n=12)
    model = load_model("toy")
    options = MethodOptions(model=model, config=resolve_config(
        model, "paper", {"inference_steps": 40, "window_start": 4, "window_stop": 16}))
    method = make_method("ldm", options)
    settings = {"method": "ldm"}
    whole = run_evaluation(load, method, RunWriter(tmp_path / "whole"), settings, images_per_group=3, progress=False)
    with pytest.raises(Interrupted):
        run_evaluation(load, FailingAfter(make_method("ldm", options), 9), RunWriter(tmp_path / "cut"), settings,
                       images_per_group=3, progress=False)
    partial = (tmp_path / "cut" / "samples.jsonl").read_bytes()
    assert 3 <= len(partial.splitlines()) <= 9
    (tmp_path / "cut" / "samples.jsonl").write_bytes(partial[:-40])  # a crash in the middle of the last write
    with pytest.raises(RunDirError, match="--resume"):
        run_evaluation(load, method, RunWriter(tmp_path / "cut"), settings, progress=False)
    resumed = run_evaluation(load, make_method("ldm", options), RunWriter(tmp_path / "cut"), settings,
                             resume=True, images_per_group=3, progress=False)
    cut = [json.loads(line) for line in (tmp_path / "cut" / "samples.jsonl").read_text().splitlines()]
    uncut = [json.loads(line) for line in (tmp_path / "whole" / "samples.jsonl").read_text().splitlines()]
    assert len(cut) == len({r["id"] for r in cut}) == len(load.samples)
    strip = lambda records: sorted(({k: v for k, v in r.items() if k != "seconds"} for r in records),  # noqa: E731
                                   key=lambda r: r["id"])
    assert strip(cut) == strip(uncut)
    assert resumed == whole
    assert (tmp_path / "cut" / "summary.json").read_text() == (tmp_path / "whole" / "summary.json").read_text()


def test_eval_and_compare_commands(nih_root, tmp_path, capsys):
    for method in ("uniform", "centre"):
        assert main(["eval", "--dataset", "nih", "--root", str(nih_root), "--method", method,
                     "--out", str(tmp_path / method)]) == 0
    assert "mean of classes" in (tmp_path / "centre" / "summary.md").read_text()
    assert (tmp_path / "centre" / "summary.csv").read_text().startswith("class,n,cnr_mean")
    table = compare_runs([tmp_path / "uniform", tmp_path / "centre"])
    assert "Compared on the 13 samples" in table and "uniform@uniform" in table
    assert main(["compare", str(tmp_path / "uniform"), str(tmp_path / "centre")]) == 0
    assert "centre@centre" in capsys.readouterr().out


def test_vindr_reader_merges_radiologists_and_keeps_ms_cxr_classes(tmp_path):
    write_image(tmp_path / "test" / "img1.png", 800, 600)
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
    from medground.errors import ExtraNotInstalledError

    with pytest.raises(ExtraNotInstalledError, match=r"not installed; pip install 'medground\[baselines\]'"):
        make_method("biovil-t")


def test_biovil_with_a_torchvision_for_another_torch_says_so(tmp_path, monkeypatch):
    """PyPI's torchvision beside a CPU torch fails with a RuntimeError while hi-ml-multimodal imports it."""
    from medground.errors import ModelLoadError

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
