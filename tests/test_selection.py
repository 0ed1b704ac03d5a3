"""Series and slice selection on built studies with real-world header variants."""

from __future__ import annotations

from pathlib import Path

import pydicom
from dicomgen import SeriesSpec, write_series
from pydicom.uid import generate_uid

from dicomnode.selection import select


def build(tmp_path: Path, *specs: SeriesSpec, charset: str | None = None) -> list[Path]:
    study = generate_uid()
    files: list[Path] = []
    for i, s in enumerate(specs):
        s.series_number = i + 1
        files += write_series(tmp_path / f"s{i}", s, study, charset=charset)
    return files


def chosen_description(sel) -> str | None:
    return sel.series.description if sel.series else None


def test_sagittal_t2_is_chosen_among_t1_stir_axial_and_localiser(tmp_path: Path):
    files = build(
        tmp_path,
        SeriesSpec("3-plane loc", plane="sag", slices=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        SeriesSpec("T1_TSE_SAG", echo_time=10, repetition_time=500),
        SeriesSpec("T2_TSE_SAG", slices=7),
        SeriesSpec("STIR_SAG"),
        SeriesSpec("T2_TSE_TRA", plane="ax", slices=9),
    )
    sel = select(files)
    assert chosen_description(sel) == "T2_TSE_SAG"
    excluded = {c["description"]: c["excluded"] for c in sel.considered}
    assert excluded["3-plane loc"] == "localiser"
    assert excluded["T1_TSE_SAG"] == "T1 weighting"
    assert excluded["STIR_SAG"] == "STIR weighting"
    assert excluded["T2_TSE_TRA"] == "axial plane"


def test_non_fat_suppressed_preferred_then_more_slices(tmp_path: Path):
    files = build(
        tmp_path,
        SeriesSpec("t2_tse_fs_sag", slices=15),
        SeriesSpec("t2_tse_sag", slices=9),
        SeriesSpec("T2 SAG", slices=11),
    )
    sel = select(files)
    assert chosen_description(sel) == "T2 SAG"
    assert "preferred over 2" in sel.reason


def test_chinese_and_vendor_descriptions(tmp_path: Path):
    files = build(
        tmp_path,
        SeriesSpec("矢状位 T1加权", echo_time=12, repetition_time=600),
        SeriesSpec("矢状位 T2加权 压脂", slices=5),
        SeriesSpec("矢状位 T2加权", slices=5),
        charset="ISO_IR 192",
    )
    assert chosen_description(select(files)) == "矢状位 T2加权"
    files = build(
        tmp_path / "v",
        SeriesSpec("sT2W_TSE"),
        SeriesSpec("sT1W_TSE", echo_time=9, repetition_time=450),
        SeriesSpec("TIRM_sag"),
    )
    assert chosen_description(select(files)) == "sT2W_TSE"


def test_missing_description_falls_back_to_echo_and_repetition_time(tmp_path: Path):
    files = build(
        tmp_path,
        SeriesSpec(None, echo_time=12, repetition_time=550, slices=5),
        SeriesSpec(None, echo_time=110, repetition_time=3500, slices=5),
    )
    sel = select(files)
    assert sel.series is not None and sel.series.weighting == "T2"
    assert float(pydicom.dcmread(sel.candidates[0].path).EchoTime) == 110


def test_middle_slice_by_position_even_when_instance_numbers_run_backwards(tmp_path: Path):
    files = build(tmp_path, SeriesSpec("T2 SAG", slices=9, reverse=True))
    sel = select(files)
    positions = [float(pydicom.dcmread(h.path).ImagePositionPatient[0]) for h in sel.ordered]
    assert positions in (sorted(positions), sorted(positions, reverse=True))
    numbers = [int(pydicom.dcmread(h.path).InstanceNumber) for h in sel.ordered]
    assert numbers in (sorted(numbers), sorted(numbers, reverse=True))
    middle = pydicom.dcmread(sel.candidates[0].path)
    assert abs(float(middle.ImagePositionPatient[0])) < 1e-6  # the centre of a 9-slice stack
    assert len(sel.candidates) == 3 and sel.complete


def test_no_sagittal_t2_gives_a_reason(tmp_path: Path):
    files = build(tmp_path, SeriesSpec("T2_TRA", plane="ax"), SeriesSpec("T1_SAG", echo_time=10, repetition_time=400))
    sel = select(files)
    assert sel.series is None
    assert "no sagittal T2" in sel.reason and "axial plane" in sel.reason and "T1 weighting" in sel.reason


def test_derived_images_and_gaps_are_handled(tmp_path: Path):
    files = build(
        tmp_path, SeriesSpec("T2 SAG MPR", image_type=("DERIVED", "SECONDARY")), SeriesSpec("T2 SAG", slices=6)
    )
    sel = select(files)
    assert chosen_description(sel) == "T2 SAG"
    gap = [f for f in files if "s1" in f.parent.name]
    gap.pop(2)  # a missing slice in the middle of the stack
    assert select(gap).complete is False
