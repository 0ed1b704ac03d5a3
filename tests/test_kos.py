"""The rejection note (IOCM KOS) that retracts our SR / GSPS / SC, checked by dciodvfy, dsrdump and PixelMed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from test_reports import dciodvfy_errors, levels, pixelmed_errors, source, write

from dicomnode.report.common import OutputIds
from dicomnode.report.gsps import build_gsps
from dicomnode.report.kos import build_rejection
from dicomnode.report.sc import build_sc
from dicomnode.report.sr import build_sr

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("dciodvfy", "dsrdump", "java"))
        or not Path("/usr/share/java/pixelmed.jar").is_file(),
        reason="validators not installed (Debian dicom3tools, dcmtk, pixelmed-apps, default-jre-headless)",
    ),
]


def outputs(tmp_path: Path, name: str = "Test^Patient", charset: str | list[str] | None = None, sc: bool = False):
    """The source slice, its ids, and our outputs for it as read back from their files (what a retraction has)."""
    src, _ = source(tmp_path, name=name, charset=charset)
    ids = OutputIds(src.StudyInstanceUID, 1)
    built = {"sr": build_sr(src, levels(), "t", ids), "gsps": build_gsps(src, levels(), "t", ids)}
    if sc:
        built["sc"] = build_sc(src, src.pixel_array.astype(np.float32), levels(), "t", ids)
    return src, ids, [pydicom.dcmread(write(ds, tmp_path / f"{kind}.dcm")) for kind, ds in built.items()]


def referenced(kos: pydicom.Dataset) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(class, instance) pairs in the content tree and in the Current Requested Procedure Evidence Sequence."""
    content = {
        (str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
        for item in kos.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
        for r in item.ReferencedSOPSequence
    }
    evidence = {
        (str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for r in series.ReferencedSOPSequence
    }
    return content, evidence


def test_rejection_note_validates_and_references_exactly_our_outputs(tmp_path: Path):
    src, ids, rejected = outputs(tmp_path)
    path = write(build_rejection(src, rejected, ids, "t"), tmp_path / "kos.dcm")
    assert dciodvfy_errors(path) == []
    assert subprocess.run(["dsrdump", "-q", str(path)], capture_output=True, timeout=60).returncode == 0
    assert pixelmed_errors(path) == []
    kos = pydicom.dcmread(path)
    assert kos.SOPClassUID == KOS_CLASS and kos.Modality == "KO"
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    ours = {(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in rejected}
    assert referenced(kos) == (ours, ours)  # the analysed slice itself is not named: an archive would hide it too
    by_series = {
        str(s.SeriesInstanceUID): {str(r.ReferencedSOPInstanceUID) for r in s.ReferencedSOPSequence}
        for study in kos.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
    }
    assert by_series == {str(ds.SeriesInstanceUID): {str(ds.SOPInstanceUID)} for ds in rejected}
    assert [str(s.StudyInstanceUID) for s in kos.CurrentRequestedProcedureEvidenceSequence] == [src.StudyInstanceUID]
    assert kos.StudyInstanceUID == src.StudyInstanceUID and kos.PatientID == src.PatientID
    assert kos.SeriesNumber == 9904 and kos.SeriesInstanceUID == ids.series("kos")
    assert kos.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in rejected}
    # a re-send after a crash is the same instance
    assert build_rejection(src, rejected, ids, "t").SOPInstanceUID == kos.SOPInstanceUID == ids.instance("kos")


def test_rejection_note_with_the_secondary_capture_and_a_non_ascii_name(tmp_path: Path):
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    src, ids, rejected = outputs(tmp_path, name=name, charset=["", "ISO 2022 IR 87"], sc=True)
    del src.AccessionNumber  # a Type 2 attribute the source lacks: written empty, as in the SR and GSPS
    path = write(build_rejection(src, rejected, ids, "t"), tmp_path / "kos.dcm")
    assert dciodvfy_errors(path) == []
    assert pixelmed_errors(path) == []
    kos = pydicom.dcmread(path)
    assert str(kos.PatientName) == name and kos.SpecificCharacterSet == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    assert "AccessionNumber" in kos and kos.AccessionNumber == ""
    ours = {(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in rejected}
    assert len(ours) == 3 and referenced(kos) == (ours, ours)
    image = [item for item in kos.ContentSequence if item.ValueType == "IMAGE"]
    assert [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in image] == [rejected[2].SOPInstanceUID]


def test_rejection_refuses_objects_of_another_study(tmp_path: Path):
    src, ids, rejected = outputs(tmp_path)
    other, _ = source(tmp_path)
    with pytest.raises(ValueError, match="another study"):
        build_rejection(other, rejected, OutputIds(other.StudyInstanceUID, 1), "t")
    with pytest.raises(ValueError, match="at least one"):
        build_rejection(src, [], ids, "t")
