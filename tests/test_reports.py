"""SR and GSPS checked by independent tools: dciodvfy, dsrdump, PixelMed, dcmpschk, dcmp2pgm."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomgen import SeriesSpec, make_instance
from PIL import Image
from pydicom.uid import generate_uid

from ai.labels import LEVELS, level_kind
from ai.results import LevelResult
from dicomnode.report.common import OutputIds
from dicomnode.report.gsps import WARNING_TEXT, build_gsps, outline
from dicomnode.report.sr import build_sr

pytestmark = pytest.mark.peers

LABELS = {"L4-L5": ["v3", "v5"], "L5-S1": ["v2"], "L3": ["v2"]}
PFIRRMANN = {"L4-L5": 4, "L5-S1": 3}


STENOSIS = {"L4-L5": 0.81, "L3-L4": 0.72}  # L3-L4: a stenosis on a disc graded normal


def levels(agreement: float = 1.0, pfirrmann: bool = True, stenosis: bool = False) -> list[LevelResult]:
    out = []
    for i, lv in enumerate(LEVELS):
        grade = PFIRRMANN.get(lv, 2) if pfirrmann and level_kind(lv) == "disc" else None
        p = STENOSIS.get(lv, 0.1) if stenosis and level_kind(lv) == "disc" else None
        out.append(
            LevelResult(
                lv,
                level_kind(lv),
                120.0 + i,
                30.0 + 18 * i,
                LABELS.get(lv, ["v1"]),
                0.81,
                0.93,
                agreement,
                grade,
                0.66 if grade else None,
                None if p is None else {"modic": 0.1, "stenosis": p},
                None if p is None else p >= 0.5,
            )
        )
    return out


def source(tmp_path: Path, name: str = "Test^Patient", charset: str | None = None) -> tuple[pydicom.Dataset, Path]:
    ds = make_instance(SeriesSpec(slices=1), generate_uid(), generate_uid(), 0, patient_name=name, charset=charset)
    path = tmp_path / "src.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path), path


def write(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def pixelmed_errors(path: Path) -> list[str]:
    r = subprocess.run(
        [
            "java",
            "-Djdk.xml.xpathExprGrpLimit=0",
            "-Djdk.xml.xpathExprOpLimit=0",
            "-Djdk.xml.xpathTotalOpLimit=0",
            "-cp",
            "/usr/share/java/pixelmed.jar",
            "com.pixelmed.validate.DicomSRValidator",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert "Exception" not in out, out[-2000:]
    return [line for line in out.splitlines() if line.startswith("Error")]


def test_sr_passes_dciodvfy_dsrdump_and_pixelmed(tmp_path: Path):
    src, _ = source(tmp_path)
    sr = write(build_sr(src, levels(), "test-1", OutputIds(src.StudyInstanceUID, 1)), tmp_path / "sr.dcm")
    assert dciodvfy_errors(sr) == []
    assert subprocess.run(["dsrdump", "-q", str(sr)], capture_output=True, timeout=60).returncode == 0
    assert pixelmed_errors(sr) == []


def test_sr_content_reads_back(tmp_path: Path):
    import highdicom as hd

    src, _ = source(tmp_path)
    sr = hd.sr.srread(write(build_sr(src, levels(), "test-1", OutputIds(src.StudyInstanceUID, 1)), tmp_path / "sr.dcm"))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert "dicomnode project" in [e.Manufacturer for e in sr.ContributingEquipmentSequence]
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99DCMNODE"
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 11
    by_id = {g.tracking_identifier: g for g in groups}
    g = by_id["L4-L5: protrusion, Schmorl's node, Pfirrmann IV"]
    assert g.finding_sites[0].value.value == "84020006"  # SNOMED CT L4/L5 disc
    evaluations = {e.name.meaning: e.value.meaning for e in g.get_qualitative_evaluations()}
    assert evaluations == {
        "Disc protrusion": "Present",
        "Schmorl's nodes": "Present",
        "Pfirrmann grade": "Pfirrmann grade IV",
    }
    assert {m.name.meaning: m.value for m in g.get_measurements()}["Pfirrmann grade confidence"] == 0.66
    assert np.allclose(g.roi.value, [[128.0, 174.0]])
    # a vertebra has no Pfirrmann grade; a model without the SPIDER heads writes none either
    assert "Pfirrmann" not in {e.name.meaning for e in by_id["L3: degenerated"].get_qualitative_evaluations()}
    plain = hd.sr.srread(
        write(build_sr(src, levels(pfirrmann=False), "t", OutputIds(src.StudyInstanceUID, 1)), tmp_path / "plain.dcm")
    )
    assert "L4-L5: protrusion, Schmorl's node" in {
        g.tracking_identifier for g in plain.content.get_planar_roi_measurement_groups()
    }


def test_gsps_passes_dciodvfy_and_dcmpschk_and_draws_the_findings(tmp_path: Path):
    src, src_path = source(tmp_path)
    lv = levels()
    pr = write(build_gsps(src, lv, "test-1", OutputIds(src.StudyInstanceUID, 1)), tmp_path / "pr.dcm")
    assert dciodvfy_errors(pr) == []
    r = subprocess.run(["dcmpschk", str(pr)], capture_output=True, text=True, timeout=60)
    assert "Test passed" in r.stdout + r.stderr
    r = subprocess.run(
        ["dcmp2pgm", "-v", "-p", str(pr), str(src_path), "/dev/null"], capture_output=True, text=True, timeout=60
    )
    dump = r.stdout + r.stderr
    assert "ABNORMAL" in dump and "L4-L5: protrusion, Schmorl's node, Pfirrmann IV" in dump
    assert "L5-S1: bulge, Pfirrmann III" in dump
    coords = [tuple(map(float, m)) for m in re.findall(r"(-?[\d.]+)\\(-?[\d.]+)", dump)]
    shapes = outline(lv)
    for level in ("L4-L5", "L5-S1"):  # each abnormal disc's ellipse points are drawn where the finding is
        for x, y in shapes[level]:
            assert any(abs(x - cx) < 0.01 and abs(y - cy) < 0.01 for cx, cy in coords), (level, x, y)
    normal = [v for v in lv if v.level == "L1-L2"][0]
    assert any(abs(normal.x - cx) < 0.01 and abs(normal.y - cy) < 0.01 for cx, cy in coords)


def test_canal_stenosis_is_a_coded_finding_in_the_sr_and_a_label_in_the_gsps(tmp_path: Path):
    import highdicom as hd

    src, src_path = source(tmp_path)
    ids = OutputIds(src.StudyInstanceUID, 1)
    sr_path = write(build_sr(src, levels(stenosis=True), "t", ids), tmp_path / "sr.dcm")
    pr_path = write(build_gsps(src, levels(stenosis=True), "t", ids), tmp_path / "pr.dcm")
    assert dciodvfy_errors(sr_path) == [] and dciodvfy_errors(pr_path) == []
    assert pixelmed_errors(sr_path) == []
    groups = {g.tracking_identifier: g for g in hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()}
    g = groups["L4-L5: protrusion, Schmorl's node, canal stenosis, Pfirrmann IV"]
    evaluations = {(e.name.value, e.name.scheme_designator): e.value.meaning for e in g.get_qualitative_evaluations()}
    assert evaluations[("76107001", "SCT")] == "Present"
    assert {m.name.meaning: m.value for m in g.get_measurements()}["Spinal stenosis probability"] == 0.81
    below = groups["L2-L3: normal, Pfirrmann II"]  # probability 0.1: no call, the probability still reported
    assert ("76107001", "SCT") not in {
        (e.name.value, e.name.scheme_designator) for e in below.get_qualitative_evaluations()
    }
    dump = subprocess.run(
        ["dcmp2pgm", "-v", "-p", str(pr_path), str(src_path), "/dev/null"], capture_output=True, text=True, timeout=60
    )
    text = dump.stdout + dump.stderr
    # the stenotic disc graded normal is outlined and labelled too
    assert (
        "L3-L4: normal, canal stenosis, Pfirrmann II" in text
        and "L4-L5: protrusion, Schmorl's node, canal stenosis" in text
    )


def test_gsps_keeps_a_monochrome1_image_the_right_way_round(tmp_path: Path):
    """PS3.3 C.11.6: the presentation state's LUT shape replaces the image's polarity; MONOCHROME1 needs INVERSE."""
    src, _ = source(tmp_path)
    assert build_gsps(src, levels(), "t", OutputIds(src.StudyInstanceUID, 1)).PresentationLUTShape == "IDENTITY"
    src.PhotometricInterpretation = "MONOCHROME1"
    src_path = write(src, tmp_path / "src1.dcm")
    pr = write(build_gsps(src, levels(), "t", OutputIds(src.StudyInstanceUID, 1)), tmp_path / "pr1.dcm")
    assert pydicom.dcmread(pr).PresentationLUTShape == "INVERSE"
    assert dciodvfy_errors(pr) == []
    r = subprocess.run(["dcmpschk", str(pr)], capture_output=True, text=True, timeout=60)
    assert "Test passed" in r.stdout + r.stderr
    r = subprocess.run(
        ["dcmp2pgm", "-p", str(pr), str(src_path), str(tmp_path / "shown.pgm")], capture_output=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    shown = np.asarray(Image.open(tmp_path / "shown.pgm"), dtype=np.float64)
    stored = src.pixel_array.astype(np.float64)
    # high stored values shown dark, as MONOCHROME1 means
    assert np.corrcoef(shown.ravel(), stored.ravel())[0, 1] < -0.9


@pytest.mark.parametrize(
    "charset, name",
    [
        ("GB18030", "张三^李四"),
        ("ISO_IR 192", "王^小明"),
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ],
)
def test_non_ascii_patient_names_survive(tmp_path: Path, charset, name: str):
    src, _ = source(tmp_path, name=name, charset=charset)
    ids = OutputIds(src.StudyInstanceUID, 1)
    for kind, ds in (("sr", build_sr(src, levels(), "t", ids)), ("pr", build_gsps(src, levels(), "t", ids))):
        path = write(ds, tmp_path / f"{kind}.dcm")
        back = pydicom.dcmread(path)
        # ISO 2022's empty first value (default repertoire) is written out as 'ISO 2022 IR 6', the same set
        expected = charset if isinstance(charset, str) else ["ISO 2022 IR 6", *charset[1:]]
        assert back.SpecificCharacterSet == expected
        assert str(back.PatientName) == name
        assert back.StudyInstanceUID == src.StudyInstanceUID
        assert dciodvfy_errors(path) == []


def test_outputs_share_the_study_with_stable_series_numbers(tmp_path: Path):
    src, _ = source(tmp_path)
    a = OutputIds(src.StudyInstanceUID, 1)
    b = OutputIds(src.StudyInstanceUID, 2)
    sr1, sr2 = build_sr(src, levels(), "t", a), build_sr(src, levels(), "t", b)
    pr1 = build_gsps(src, levels(), "t", a)
    assert sr1.StudyInstanceUID == pr1.StudyInstanceUID == src.StudyInstanceUID
    assert (sr1.SeriesNumber, pr1.SeriesNumber) == (9901, 9902)
    assert sr1.SeriesInstanceUID == sr2.SeriesInstanceUID != pr1.SeriesInstanceUID
    assert sr1.SOPInstanceUID != sr2.SOPInstanceUID  # a new revision is a new instance
    assert build_sr(src, levels(), "t", a).SOPInstanceUID == sr1.SOPInstanceUID  # a re-run is the same instance


def test_burned_in_secondary_capture_validates(tmp_path: Path):
    from dicomnode.report.sc import build_sc

    src, _ = source(tmp_path)
    sc = write(
        build_sc(src, src.pixel_array.astype(np.float32), levels(), "t", OutputIds(src.StudyInstanceUID, 1)),
        tmp_path / "sc.dcm",
    )
    assert dciodvfy_errors(sc) == []
    back = pydicom.dcmread(sc)
    assert back.BurnedInAnnotation == "YES" and back.StudyInstanceUID == src.StudyInstanceUID
    assert back.pixel_array.shape == (src.Rows, src.Columns, 3)
    lv = levels()[8]  # L4-L5, abnormal: drawn in orange-red near its point
    patch = back.pixel_array[int(lv.y) - 20 : int(lv.y) + 20, int(lv.x) - 40 : int(lv.x) + 40]
    assert ((patch[..., 0] > 200) & (patch[..., 2] < 100)).any()


def test_uncertain_numbering_is_said_in_the_sr_and_on_the_image(tmp_path: Path):
    import highdicom as hd

    src, src_path = source(tmp_path)
    lv = levels(agreement=2 / 3)  # one of three landmark nets a level off everywhere
    ids = OutputIds(src.StudyInstanceUID, 1)
    sr_path = write(build_sr(src, lv, "test-1", ids), tmp_path / "sr.dcm")
    assert dciodvfy_errors(sr_path) == [] and pixelmed_errors(sr_path) == []
    names = [g.tracking_identifier for g in hd.sr.srread(sr_path).content.get_planar_roi_measurement_groups()]
    assert len(names) == 11 and all(n.endswith(" [level numbering uncertain]") for n in names)
    pr = build_gsps(src, lv, "test-1", ids)
    assert "numbering uncertain" in pr.ContentDescription and len(pr.ContentDescription) <= 64
    pr_path = write(pr, tmp_path / "pr.dcm")
    assert dciodvfy_errors(pr_path) == []
    r = subprocess.run(["dcmpschk", str(pr_path)], capture_output=True, text=True, timeout=60)
    assert "Test passed" in r.stdout + r.stderr
    r = subprocess.run(
        ["dcmp2pgm", "-v", "-p", str(pr_path), str(src_path), "/dev/null"], capture_output=True, text=True, timeout=60
    )
    assert WARNING_TEXT in r.stdout + r.stderr and "L4-L5: protrusion" in r.stdout + r.stderr
    certain = build_gsps(src, levels(), "test-1", ids)
    assert "WARNING" not in [g.GraphicLayer for g in certain.GraphicLayerSequence]
