"""Slice choice in the pipeline: every candidate is located, only the chosen one is graded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomgen import SeriesSpec, write_series

from ai.infer import Analyzer
from dicomnode.pipeline import analyse


def test_only_the_best_localised_candidate_is_graded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = write_series(tmp_path / "in", SeriesSpec(slices=5), "1.2.826.0.1.3680043.8.498.1")
    analyzer = Analyzer.load("default", "cpu")
    graded = []
    grade_slice = analyzer.grade_slice
    monkeypatch.setattr(analyzer, "grade_slice", lambda found: graded.append(found) or grade_slice(found))
    result = analyse(paths, analyzer)
    assert len(graded) == 1 and len(result.slice_scores) == 3  # the middle three were located
    chosen = str(result.source.SOPInstanceUID)
    assert result.slice_scores[chosen] == max(result.slice_scores.values())
    assert graded[0].score == pytest.approx(result.slice_scores[chosen], abs=1e-4)
    # the same levels analyze() gives for that slice alone
    ds = pydicom.dcmread(next(p for p in paths if pydicom.dcmread(p).SOPInstanceUID == chosen))
    alone = analyzer.analyze(ds.pixel_array.astype(np.float32), (1.0, 1.0))
    assert [lv.to_dict() for lv in result.levels] == [lv.to_dict() for lv in alone]


def test_one_candidate_locates_only_the_middle_slice(tmp_path: Path):
    paths = write_series(tmp_path / "in", SeriesSpec(slices=5), "1.2.826.0.1.3680043.8.498.2")
    result = analyse(paths, Analyzer.load("default", "cpu"), candidates=1)
    assert list(result.slice_scores) == [str(result.source.SOPInstanceUID)]
    assert result.source.InstanceNumber == 3  # the middle of five
