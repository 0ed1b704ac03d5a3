"""The Tianchi loader keeps the annotation's quirks explicit (needs ../shared/data)."""

from __future__ import annotations

import pytest

from ai.data import load_dataset, parse_labels

pytestmark = pytest.mark.data


def test_parse_labels_combined_and_empty():
    assert parse_labels({"disc": "v5,v2"}, "disc") == ["v2", "v5"]
    assert parse_labels({"disc": "", "vertebra": "v2"}, "disc") == []
    assert parse_labels({"disc": "v1", "vertebra": ""}, "disc") == ["v1"]


def test_train150_loads_with_its_quirks(shared_data):
    studies = load_dataset(shared_data)
    assert len(studies) == 150
    counts = sorted(len(s.points) for s in studies)
    assert counts[0] == 10 and counts[-1] == 11  # one study has 10 points
    labels = [tuple(p.labels) for s in studies for p in s.points.values()]
    assert ("v2", "v5") in labels and ("v5",) in labels and () in labels
    pixels, spacing = studies[0].load()
    assert pixels.ndim == 2 and 0.3 < spacing[0] < 2.0
