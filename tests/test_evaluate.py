"""The official metric on hand-made predictions whose score is known."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai.data import Point, Study
from ai.evaluate import StudyResult, evaluate, seed_class
from ai.labels import LEVELS, level_kind


def study(labels: dict[str, list[str]] | None = None, missing: str | None = None) -> Study:
    s = Study("1.2", "1.2.3", "1.2.3.4", Path("x.dcm"))
    for i, lv in enumerate(LEVELS):
        if lv == missing:
            continue
        default = ["v1"] if level_kind(lv) == "disc" else ["v2"]
        s.points[lv] = Point(lv, 100.0, 20.0 + 20 * i, (labels or {}).get(lv, default))
    return s


def preds(s: Study, dx: float = 0.0, labels: dict[str, list[str]] | None = None) -> list[dict]:
    return [
        {"level": p.level, "x": p.x + dx, "y": p.y, "labels": (labels or {}).get(p.level, p.labels)}
        for p in s.points.values()
    ]


def test_perfect_predictions_score_one_on_present_classes():
    s = study({"L4-L5": ["v3", "v5"], "L1": ["v1"]})
    m = evaluate([StudyResult(s, (0.5, 0.5), preds(s))])
    assert m["within_6mm"] == 1.0 and m["all_levels_hit"] == 1.0 and m["mean_error_mm"] == 0.0
    pc = m["per_class"]
    assert pc["disc_v3"]["f1"] == pc["disc_v5"]["f1"] == pc["disc_v1"]["f1"] == 1.0
    assert pc["disc_v2"]["f1"] == 0.0  # absent everywhere: counts 0 in the macro mean, as the official script
    assert m["seed_recall"] == 1.0 and m["seed_precision"] == 1.0


def test_distance_uses_pixel_spacing():
    s = study()
    near = evaluate([StudyResult(s, (0.5, 0.5), preds(s, dx=11.0))])  # 5.5 mm
    far = evaluate([StudyResult(s, (0.5, 0.5), preds(s, dx=13.0))])  # 6.5 mm
    assert near["within_6mm"] == 1.0 and far["within_6mm"] == 0.0
    assert far["tianchi_macro_f1"] == 0.0
    assert far["per_class"]["vertebra_v2"]["fn"] == 5 and far["per_class"]["vertebra_v2"]["fp"] == 5


def test_wrong_label_is_one_false_positive_and_one_false_negative():
    s = study()
    m = evaluate([StudyResult(s, (1.0, 1.0), preds(s, labels={"L3-L4": ["v2"]}))])
    assert m["per_class"]["disc_v1"]["fn"] == 1 and m["per_class"]["disc_v2"]["fp"] == 1
    assert m["per_class"]["disc_v1"]["tp"] == 5


def test_missing_ground_truth_point_and_extra_prediction():
    s = study(missing="L2")
    p = preds(s) + [{"level": "L2", "x": 0, "y": 0, "labels": ["v2"]}]
    m = evaluate([StudyResult(s, (1.0, 1.0), p)])
    assert m["points"] == 10 and m["within_6mm"] == 1.0
    assert m["per_class"]["vertebra_v2"]["fp"] == 1


@pytest.mark.parametrize(
    "kind, labels, expected",
    [
        ("disc", ["v2", "v5"], "disc-v2"),
        ("disc", ["v5"], "disc-v5"),
        ("vertebra", ["v2"], "vertebra-v2"),
        ("disc", [], None),
    ],
)
def test_seed_classes(kind, labels, expected):
    assert seed_class(kind, labels) == expected


def test_single_label_figure_drops_the_schmorl_label_beside_a_disc_grade():
    """The official evaluator reads one code per point: with 'v3,v5' predicted and true, our metric counts both,
    the single-label figure only v3 (so Schmorl's node is a false negative there)."""
    s = study({"L4-L5": ["v3", "v5"]})
    m = evaluate([StudyResult(s, (0.5, 0.5), preds(s))])
    assert m["per_class"]["disc_v5"]["f1"] == 1.0
    assert m["tianchi_macro_f1_single_label"] < m["tianchi_macro_f1"]
    plain = study()
    m = evaluate([StudyResult(plain, (0.5, 0.5), preds(plain))])
    assert m["tianchi_macro_f1_single_label"] == m["tianchi_macro_f1"]
