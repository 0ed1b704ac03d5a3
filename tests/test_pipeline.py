"""Slice choice in the pipeline: every candidate is located, only the chosen one is graded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomgen import SeriesSpec, make_instance, write_bare, write_series

from ai.data import load_dataset
from ai.infer import Analyzer
from dicomnode.analyse import analyse


def test_only_the_best_localised_candidate_is_graded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    paths = write_series(tmp_path / "in", SeriesSpec(slices=5), "1.2.826.0.1.3680043.8.498.1")
    analyzer = Analyzer.load("default", "cpu", int8=False)  # fp32: smooth in the points, so compared closely below
    graded = []
    grade_slice = analyzer.grade_slice
    monkeypatch.setattr(analyzer, "grade_slice", lambda found: graded.append(found) or grade_slice(found))
    result = analyse(paths, analyzer)
    assert len(graded) == 1 and len(result.slice_scores) == 3  # the middle three were located
    chosen = str(result.source.SOPInstanceUID)
    assert result.slice_scores[chosen] == max(result.slice_scores.values())
    assert graded[0].score == pytest.approx(result.slice_scores[chosen], abs=1e-4)
    # the levels analyze() gives for that slice alone (located in a batch of one: the same up to float rounding)
    ds = pydicom.dcmread(next(p for p in paths if pydicom.dcmread(p).SOPInstanceUID == chosen))
    alone = analyzer.analyze(ds.pixel_array.astype(np.float32), (1.0, 1.0))
    for got, want in zip(result.levels, alone, strict=True):
        assert (got.level, got.labels) == (want.level, want.labels)
        assert (got.x, got.y) == pytest.approx((want.x, want.y), abs=0.01)
        assert got.confidence == pytest.approx(want.confidence, abs=1e-3)


def test_one_candidate_locates_only_the_middle_slice(tmp_path: Path):
    paths = write_series(tmp_path / "in", SeriesSpec(slices=5), "1.2.826.0.1.3680043.8.498.2")
    result = analyse(paths, Analyzer.load("default", "cpu"), candidates=1)
    assert list(result.slice_scores) == [str(result.source.SOPInstanceUID)]
    assert result.source.InstanceNumber == 3  # the middle of five


@pytest.mark.data
def test_a_monochrome1_slice_is_read_bright_for_signal(shared_data: Path, tmp_path: Path):
    """MR may be stored MONOCHROME1 (bright = low value); the nets learnt bright = signal. The same real slice
    stored both ways gives the same levels; read without turning it over, it would not."""
    pixels, _ = load_dataset(shared_data)[0].load()
    analyzer = Analyzer.load("default", "cpu")
    spec = SeriesSpec(slices=1, rows=pixels.shape[0], cols=pixels.shape[1])
    results = []
    for photometric, stored in (("MONOCHROME2", pixels), ("MONOCHROME1", pixels.max() - pixels)):
        ds = make_instance(spec, "1.2.826.0.1.3680043.8.498.3", "1.2.826.0.1.3680043.8.498.4", 0, stored)
        ds.PhotometricInterpretation = photometric
        path = tmp_path / f"{photometric}.dcm"
        ds.save_as(path, enforce_file_format=True)
        results.append(analyse([path], analyzer, candidates=1))
    plain, inverted = ([(lv.x, lv.y) for lv in r.levels] for r in results)
    assert np.allclose(plain, inverted, atol=0.05)
    assert [lv.labels for lv in results[0].levels] == [lv.labels for lv in results[1].levels]
    as_stored = analyzer.analyze(pixels.max() - pixels, (1.0, 1.0))
    assert not np.allclose(plain, [(lv.x, lv.y) for lv in as_stored], atol=2.0)


def test_a_series_of_bare_data_sets_is_analysed_like_part10_files(tmp_path: Path):
    """`dicomnode analyze` on an old archive's files (no preamble, no file meta) finds the series and gives the
    levels it gives for the same slices written as Part 10 files."""
    paths = write_series(tmp_path / "in", SeriesSpec(slices=3), "1.2.826.0.1.3680043.8.498.5")
    analyzer = Analyzer.load("default", "cpu")
    part10 = analyse(paths, analyzer, candidates=1)
    for p in paths:
        write_bare(p)
    bare = analyse(paths, analyzer, candidates=1)
    assert [lv.to_dict() for lv in bare.levels] == [lv.to_dict() for lv in part10.levels]


def test_a_slice_whose_orientation_cannot_be_named_fails_with_the_reason(tmp_path: Path):
    """A sagittal plane turned 45 degrees in-plane: neither axis is up, so the node refuses rather than guesses."""
    from dicomnode.analyse import AnalysisError

    paths = write_series(tmp_path / "in", SeriesSpec(slices=3), "1.2.826.0.1.3680043.8.498.6")
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [0, 0.70710678, 0.70710678, 0, -0.70710678, 0.70710678]
        ds.save_as(p)
    with pytest.raises(AnalysisError) as err:
        analyse(paths, Analyzer.load("default", "cpu"), candidates=1)
    assert err.value.code == "orientation" and "leans to no patient axis" in err.value.reason


def test_a_multi_frame_series_is_analysed_frame_by_frame(tmp_path: Path):
    """The frames of one Legacy Converted Enhanced MR object are ordered by position like single slices; the middle
    frames are the candidates and the chosen one is named in the decision."""
    from dicomgen import write_multiframe

    path = write_multiframe(tmp_path / "mf.dcm", SeriesSpec("T2 SAG", slices=5), "1.2.826.0.1.3680043.8.498.7")
    result = analyse([path], Analyzer.load("default", "cpu"))
    uid = str(result.source.SOPInstanceUID)
    assert set(result.slice_scores) == {f"{uid} frame {k}" for k in (2, 3, 4)}
    assert result.frame in (2, 3, 4) and result.decision().chosen_frame == result.frame
    assert result.to_json()["frame"] == result.frame
    enhanced = write_multiframe(
        tmp_path / "emr.dcm", SeriesSpec("T2 SAG", slices=5), "1.2.826.0.1.3680043.8.498.8", enhanced=True
    )
    assert analyse([enhanced], Analyzer.load("default", "cpu"), candidates=1).frame == 3
