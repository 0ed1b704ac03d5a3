"""The seed report's pipeline as the node runs it: boxes by the report's rule, the committed model loads and
analyses through the same entry point as the default model."""

from __future__ import annotations

import numpy as np
import pytest

from ai.labels import LEVELS


def test_seed_boxes_follow_the_report_rule():
    from ai.seed import BOX_ASPECT, seed_boxes

    ys = np.array([100, 115, 130, 150, 170, 185, 200, 215, 230, 245, 260], np.float32)
    xy = np.stack([np.full(11, 200.0), ys], 1)
    mask = np.ones(11, bool)
    mask[5] = False  # a missing point: its row is empty and its neighbours look past it
    boxes = seed_boxes(xy, mask)
    assert np.isnan(boxes[5]).all()
    h = boxes[:, 3] - boxes[:, 1]
    w = boxes[:, 2] - boxes[:, 0]
    assert h[0] == pytest.approx(2 * 15)  # end point: its one neighbour
    assert h[3] == pytest.approx(2 * 20)  # middle: twice the larger gap
    assert h[4] == pytest.approx(2 * 30)  # the gap across the missing point
    ok = ~np.isnan(h)
    assert np.allclose(w[ok], BOX_ASPECT * h[ok])
    assert np.allclose((boxes[ok, 1] + boxes[ok, 3]) / 2, ys[ok])


def test_committed_seed_model_analyses_a_slice():
    pytest.importorskip("ultralytics", reason="the optional seed extra is not installed")
    from ai.infer import WEIGHTS_ROOT, Analyzer

    if not (WEIGHTS_ROOT / "seed" / "model.json").is_file():
        pytest.fail("ai/weights/seed is missing: train it with `dicomnode train --detector yolo` (see MODEL_CARD.md)")
    analyzer = Analyzer.load("seed", "cpu")
    img = np.random.default_rng(0).normal(500, 100, (384, 320)).astype(np.float32)
    levels = analyzer.analyze(img, (0.9, 0.9))
    assert [lv.level for lv in levels] == list(LEVELS)
    assert all(0 <= lv.x < 320 and 0 <= lv.y < 384 for lv in levels)
