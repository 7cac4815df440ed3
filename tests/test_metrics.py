"""Metrics on hand-computed cases (docs/method.md section 7 and the official evaluation code)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medground.errors import BoxError
from medground.metrics import auroc, cnr, miou


def test_cnr_single_box_by_hand():
    heatmap = np.zeros((4, 4))
    heatmap[0:2, 0:2] = [[1.0, 0.5], [1.0, 0.5]]  # inside: mean .75, var .0625
    heatmap[3, 3] = 0.6  # outside (12 px): mean .05, var = .36/12 - .0025 = .0275
    expected = (0.75 - 0.05) / math.sqrt(0.0625 + 0.0275)
    assert cnr(heatmap, [(0, 0, 2, 2)]) == pytest.approx(expected, abs=1e-12)
    assert cnr(1.0 - heatmap, [(0, 0, 2, 2)], signed=True) == pytest.approx(-expected, abs=1e-12)
    assert cnr(1.0 - heatmap, [(0, 0, 2, 2)]) == pytest.approx(expected, abs=1e-12)


def test_cnr_ignores_nan_and_blanks_earlier_boxes():
    heatmap = np.full((3, 4), 0.0)
    heatmap[:, 0] = np.nan  # padding: never counts
    heatmap[0, 1] = 1.0
    heatmap[2, 3] = 0.5
    # box A = pixel (0,1): inside {1}; outside = 8 valid pixels {0 x7, .5}: mean 1/16, var .25/8 - (1/16)^2
    var_out_a = 0.25 / 8 - (1 / 16) ** 2
    cnr_a = (1 - 1 / 16) / math.sqrt(var_out_a)
    # box B = pixels (2,2..3): inside {0, .5}; A is now blank, outside = 6 zeros
    cnr_b = 0.25 / math.sqrt(0.0625)
    assert cnr(heatmap, [(1, 0, 1, 1), (2, 2, 2, 1)]) == pytest.approx((cnr_a + cnr_b) / 2, abs=1e-12)


def test_cnr_constant_map_is_zero():
    assert cnr(np.zeros((5, 5)), [(1, 1, 2, 2)]) == 0.0


def test_miou_by_hand():
    heatmap = np.zeros((4, 4))
    heatmap[0, 0:2] = [0.35, 0.15]
    heatmap[3, 3] = np.nan
    box = (0, 0, 2, 1)  # target pixels (0,0) and (0,1)
    # thr .1: pred {(0,0),(0,1)} IoU 1; .2 and .3: {(0,0)} IoU .5; .4, .5: empty -> 0
    assert miou(heatmap, [box]) == pytest.approx((1 + 0.5 + 0.5 + 0 + 0) / 5)
    assert miou(heatmap, [box], thresholds=(0.1,)) == 1.0


def test_binned_auroc_matches_torcheval_docstring_example():
    # torcheval: binary_binned_auroc([0.1, 0.5, 0.7, 0.8], [1, 0, 1, 1], threshold=5) == 0.5
    heatmap = np.array([[0.1, 0.5, 0.7, 0.8]])
    assert auroc(heatmap, [(0, 0, 1, 1), (2, 0, 2, 1)], bins=5) == pytest.approx(0.5)
    assert auroc(heatmap, [(0, 0, 1, 1), (2, 0, 2, 1)], bins=None) == pytest.approx(2 / 3)


def test_auroc_exact_perfect_and_ties_and_nan():
    heatmap = np.array([[0.9, 0.8, 0.1, np.nan], [0.2, 0.2, 0.2, np.nan]])
    assert auroc(heatmap, [(0, 0, 2, 1)], bins=None) == 1.0
    assert auroc(heatmap, [(0, 0, 2, 1)], bins=5) == pytest.approx(1.0)
    tied = np.full((2, 2), 0.5)
    assert auroc(tied, [(0, 0, 1, 1)], bins=None) == 0.5
    assert auroc(np.zeros((2, 2)), [(0, 0, 2, 2)], bins=5) == 0.5  # no negatives


def test_binned_auroc_counts_only_valid_pixels():
    heatmap = np.array([[1.0, 0.0, np.nan, np.nan]])
    # points from (0,0): thr 1 -> tp1 fp0; lower thresholds: same until thr 0: tp1 fp1. area = 1*1 / (1*1)
    assert auroc(heatmap, [(0, 0, 1, 1)], bins=5) == pytest.approx(1.0)


def test_boxes_outside_or_malformed_raise():
    heatmap = np.zeros((10, 10))
    with pytest.raises(BoxError, match="outside"):
        cnr(heatmap, [(20, 20, 5, 5)])
    with pytest.raises(BoxError, match="positive"):
        miou(heatmap, [(1, 1, 0, 3)])
    with pytest.raises(BoxError):
        auroc(heatmap, [])


def test_metrics_agree_with_an_independent_float32_torch_implementation():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    heatmap = rng.random((40, 30)).astype(np.float32)
    heatmap[heatmap < 0.4] = 0
    heatmap[:, :3] = np.nan
    boxes = [(5, 6, 10, 8), (12, 20, 9, 9)]
    values = torch.from_numpy(heatmap)
    target = torch.zeros_like(values, dtype=torch.bool)
    for x, y, w, h in boxes:
        target[y : y + h, x : x + w] = True
    ious = [(((values > t) & target).sum() / ((values > t) | target).sum()).item() for t in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert miou(heatmap, boxes) == pytest.approx(float(np.mean(ious)), abs=1e-6)
    blank = values.clone()
    ratios = []
    for x, y, w, h in boxes:
        inside = blank[y : y + h, x : x + w]
        mu_in, var_in = inside.nanmean(), (inside - inside.nanmean()).square().nanmean()
        blank[y : y + h, x : x + w] = float("nan")
        mu_out, var_out = blank.nanmean(), (blank - blank.nanmean()).square().nanmean()
        ratios.append(torch.nan_to_num((mu_in - mu_out).abs() / torch.sqrt(var_in + var_out)).item())
    assert cnr(heatmap, boxes) == pytest.approx(sum(ratios) / 2, abs=1e-5)
