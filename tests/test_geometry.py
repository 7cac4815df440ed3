"""The single geometry object: forward resize + crop, box mapping, and both back-projections."""

from __future__ import annotations

import numpy as np
import pytest

from medground.geometry import Geometry


@pytest.mark.parametrize("width,height", [(301, 353), (417, 289), (1024, 1024), (2500, 2048)])
def test_forward_shapes_and_crop(width, height):
    geometry = Geometry(width=width, height=height, size=128)
    rh, rw = geometry.resized
    assert min(rh, rw) == 128
    assert max(rh, rw) == int(128 * max(width, height) / min(width, height))
    top, left = geometry.crop_offset
    assert (top, left) == (rh // 2 - 64, rw // 2 - 64)
    pixels = np.random.default_rng(0).random((height, width), dtype=np.float32)
    assert geometry.to_model(pixels).shape == (1, 1, 128, 128)


def test_forward_crop_keeps_the_centre_of_a_ramp():
    width, height = 300, 200
    ramp = np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1))
    model = Geometry(width, height, 100).to_model(ramp)[0, 0].numpy()
    assert model[:, 50].mean() == pytest.approx(0.5, abs=0.01)  # the middle column stays in the middle
    assert 0.15 < model[0, 0] < 0.19 and 0.81 < model[0, -1] < 0.85  # a sixth cut off each side


def test_box_mapping_follows_image_content():
    width, height = 417, 289
    pixels = np.zeros((height, width), dtype=np.float32)
    box = (180, 100, 60, 40)
    pixels[100:140, 180:240] = 1.0
    geometry = Geometry(width, height, 128)
    x, y, w, h = geometry.box_to_model(box)
    model = geometry.to_model(pixels)[0, 0].numpy()
    rows, cols = np.nonzero(model > 0.5)
    assert cols.min() == pytest.approx(x, abs=1.0) and cols.max() + 1 == pytest.approx(x + w, abs=1.0)
    assert rows.min() == pytest.approx(y, abs=1.0) and rows.max() + 1 == pytest.approx(y + h, abs=1.0)
    assert geometry.box_in_crop(box)
    assert not geometry.box_in_crop((0, 0, 40, 40))  # the left edge is cropped away in a landscape image


@pytest.mark.parametrize("width,height", [(301, 353), (417, 289)])
def test_back_projection_round_trip(width, height):
    geometry = Geometry(width, height, 128)
    columns = np.tile(np.arange(128, dtype=np.float32), (128, 1))
    for mode, slack in (("paper", 0), ("exact", 3)):
        original = geometry.to_original(columns, mode)
        assert original.shape == (height, width)
        valid_cols = ~np.isnan(original).all(axis=0)
        # the crop covers about the short side's square (exactly so in the official mapping)
        assert abs(int(valid_cols.sum()) - min(width, height)) <= slack
    exact = geometry.to_original(columns, "exact")
    paper = geometry.to_original(columns, "paper")
    # exact: the model column a pixel lands in is where the forward resize put that pixel
    rh, rw = geometry.resized
    _, left = geometry.crop_offset
    for x in range(width):
        expected = int((x + 0.5) * rw / width) - left
        if 0 <= expected < 128:
            assert np.nanmax(exact[:, x]) == expected
    # the official mapping agrees with the exact one to within about one model pixel
    both = ~np.isnan(exact) & ~np.isnan(paper)
    assert np.abs(exact[both] - paper[both]).max() <= 1.0 + 1e-6


def test_paper_back_projection_pads_symmetrically_with_nan():
    geometry = Geometry(width=11 + 64, height=64, size=64)  # 11 extra columns: 5 left, 6 right
    original = geometry.to_original(np.ones((64, 64), dtype=np.float32), "paper")
    nan_columns = np.isnan(original).all(axis=0)
    assert nan_columns[:5].all() and not nan_columns[5] and nan_columns[-6:].all() and not nan_columns[-7]


def test_boxes_from_mask_one_per_region_best_first():
    from medground.readout.boxes import boxes_from_mask

    heatmap = np.zeros((20, 30), dtype=np.float32)
    heatmap[2:5, 3:9] = 0.4
    heatmap[10:18, 20:25] = 0.9
    heatmap[0, 29] = np.nan
    boxes = boxes_from_mask(heatmap > 0, heatmap)
    assert [(b.x, b.y, b.w, b.h) for b in boxes] == [(20, 10, 5, 8), (3, 2, 6, 3)]
    assert boxes[0].score == pytest.approx(0.9) and boxes[1].score == pytest.approx(0.4)
    assert boxes_from_mask(np.zeros((4, 4), dtype=bool), np.zeros((4, 4))) == []
