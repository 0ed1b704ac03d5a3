"""The Tianchi loader keeps the annotation's quirks explicit (needs ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai.data import load_annotations, load_dataset, parse_labels


def test_parse_labels_combined_and_empty():
    assert parse_labels({"disc": "v5,v2"}, "disc") == ["v2", "v5"]
    assert parse_labels({"disc": "", "vertebra": "v2"}, "disc") == []
    assert parse_labels({"disc": "v1", "vertebra": ""}, "disc") == ["v1"]


def _item(uid: str, points: list[dict]) -> dict:
    return {"seriesUid": "1.2.3", "instanceUid": uid, "annotation": [{"data": {"point": points}}]}


def test_a_study_listing_several_instances_is_scored_on_the_annotated_one_that_is_here(tmp_path: Path):
    point = {"coord": [10, 20], "tag": {"identification": "L3", "vertebra": "v2"}}
    studies = [
        {"studyUid": "1.9.1", "data": [_item("1.9.1.1", []), _item("1.9.1.2", [point])]},  # first entry empty
        {"studyUid": "1.9.2", "data": [_item("1.9.2.1", [point]), _item("1.9.2.2", [point])]},  # first image absent
        {"studyUid": "1.9.3", "data": [_item("1.9.3.1", [point])]},  # image absent: kept, unanswered
    ]
    ann = tmp_path / "x_annotation.json"
    ann.write_text(json.dumps(studies))
    here = {"1.9.1.1": tmp_path / "a", "1.9.1.2": tmp_path / "b", "1.9.2.2": tmp_path / "c"}
    loaded = load_annotations(ann, here, require_images=False)
    assert [s.instance_uid for s in loaded] == ["1.9.1.2", "1.9.2.2", "1.9.3.1"]
    assert [s.path for s in loaded] == [tmp_path / "b", tmp_path / "c", None]
    assert all(list(s.points) == ["L3"] and s.points["L3"].labels == ["v2"] for s in loaded)
    with pytest.raises(FileNotFoundError, match="1.9.3.1"):
        load_annotations(ann, here)


@pytest.mark.data
def test_train150_loads_with_its_quirks(shared_data):
    studies = load_dataset(shared_data)
    assert len(studies) == 150
    counts = sorted(len(s.points) for s in studies)
    assert counts[0] == 10 and counts[-1] == 11  # one study has 10 points
    labels = [tuple(p.labels) for s in studies for p in s.points.values()]
    assert ("v2", "v5") in labels and ("v5",) in labels and () in labels
    pixels, spacing = studies[0].load()
    assert pixels.ndim == 2 and 0.3 < spacing[0] < 2.0
