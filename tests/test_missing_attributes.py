"""Real slices with attributes missing or blank, as scanners and archives really write them: `analyze` writes an SR
and GSPS that dciodvfy accepts, or ends with a documented reason code; never a traceback. The slices are read at
run time from ../shared and nothing of them is kept."""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peers import DICOMNODE
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ai.data import load_dataset
from dicomnode.cli import analyze_path
from storage.states import REASONS

pytestmark = [pytest.mark.peers, pytest.mark.data]

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
# what a property example never touches: the pixels and their description, the UIDs
KEPT = {
    "PixelData",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
}
BUGS = {"internal_error", "report_error"}  # documented, but a slice the node can read must never end so


def drop(*keywords: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for k in keywords:
            if k in ds:
                del ds[k]

    return change


def blank(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds[keyword].value = None

    return change


def setting(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for k, v in values.items():
            setattr(ds, k, v)

    return change


# The nine variants of issue #35, each one attribute missing or invalid.
VARIANTS: dict[str, Callable[[Dataset], None]] = {
    "no_slice_thickness": drop("SliceThickness"),
    "empty_slice_thickness": blank("SliceThickness"),
    "no_pixel_spacing": drop("PixelSpacing"),
    "no_image_position": drop("ImagePositionPatient"),
    "no_patient_id": drop("PatientID"),
    "zero_pixel_spacing": setting(PixelSpacing=[0, 0]),
    "no_description_or_body_part": drop("StudyDescription", "BodyPartExamined"),
    "no_frame_of_reference": drop("FrameOfReferenceUID"),
    "multi_valued_window": setting(WindowCenter=[100, 200], WindowWidth=[200, 400]),
    # found by the property test below
    "window_centre_without_width": drop("WindowCenter"),
    "no_samples_per_pixel_or_photometric": drop("SamplesPerPixel", "PhotometricInterpretation"),
    "no_modality": drop("Modality"),
    "no_description_or_timing": drop("SeriesDescription", "ProtocolName", "EchoTime", "RepetitionTime"),
    "empty_spacing_between_slices": setting(SpacingBetweenSlices=None),
    "deidentified_without_method": setting(PatientIdentityRemoved="YES", DeidentificationMethod=None),
}


def real_slices() -> list[Path]:
    """One slice of each population: Tianchi, SPIDER, LSMRI (where present)."""
    out = [load_dataset(SHARED / "tianchi-spark-train150")[3].path]
    for name in ("spider-t2", "lsmri-t2"):
        found = sorted((SHARED / name / "images").rglob("*.dcm"))[:1] if (SHARED / name).is_dir() else []
        out += found
    return [p for p in out if p is not None]


def dciodvfy_errors(path: str) -> list[str]:
    r = subprocess.run(["dciodvfy", path], capture_output=True, text=True, timeout=120)
    return [line for line in (r.stdout + r.stderr).splitlines() if line.startswith("Error")]


def write_variant(source: Path, change: Callable[[Dataset], None], folder: Path) -> Path:
    ds = copy.deepcopy(pydicom.dcmread(source))
    change(ds)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "slice.dcm"
    ds.save_as(path, enforce_file_format=False)
    return path


def check_outcome(result: dict) -> None:
    """SR + GSPS that dciodvfy accepts, or a documented reason code that is not a bug's."""
    if "error" in result:
        assert result["error"] in REASONS and result["error"] not in BUGS, result
        return
    files = result["files"]
    assert {Path(f).name for f in files} >= {"sr.dcm", "gsps.dcm"}
    for f in files:
        assert dciodvfy_errors(f) == [], f


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_gap_of_the_issue_still_gives_sr_and_gsps(name: str, tmp_path: Path):
    source = real_slices()[-1 if name == "deidentified_without_method" else 0]
    path = write_variant(source, VARIANTS[name], tmp_path / "in")
    result = analyze_path(path, tmp_path / "out")
    assert "error" not in result, result
    check_outcome(result)
    assert len(result["levels"]) == 11
    if name in ("no_pixel_spacing", "zero_pixel_spacing"):
        assert any("pixel spacing unknown" in r for r in result["repairs"])
    if name == "no_image_position":
        assert "ordered by InstanceNumber" in result["selection"]["reason"]
    if name == "no_description_or_timing":
        assert "weighting unknown" in result["selection"]["reason"]
    if name == "no_patient_id":
        assert pydicom.dcmread(tmp_path / "out" / "sr.dcm").PatientID == ""


def test_a_missing_slice_thickness_is_left_out_of_the_image_library_not_invented(tmp_path: Path):
    import highdicom as hd

    result = analyze_path(write_variant(real_slices()[0], drop("SliceThickness"), tmp_path / "in"), tmp_path / "out")
    sr = pydicom.dcmread(tmp_path / "out" / "sr.dcm")
    names: list[str] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            names.append(item.ConceptNameCodeSequence[0].CodeMeaning)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    assert "Slice Thickness" not in names and "Horizontal Pixel Spacing" in names
    assert hd.sr.srread(tmp_path / "out" / "sr.dcm").content.get_planar_roi_measurement_groups()
    assert any("SliceThickness" in r for r in result["repairs"])
    from test_reports import pixelmed_errors

    assert pixelmed_errors(tmp_path / "out" / "sr.dcm") == []


def test_analyze_ends_what_it_cannot_do_with_one_line_and_status_2(tmp_path: Path):
    path = write_variant(real_slices()[0], drop("ImageOrientationPatient"), tmp_path / "in")
    r = subprocess.run(
        [*DICOMNODE, "analyze", str(path), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].split(": ")[1] in REASONS, r.stderr


@settings(
    max_examples=int(__import__("os").environ.get("PROP_N", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_attributes_deleted_or_blanked_give_results_or_a_documented_reason(data, tmp_path_factory):
    source = data.draw(st.sampled_from(real_slices()), label="slice")
    ds = pydicom.dcmread(source)
    keywords = sorted(e.keyword for e in ds if e.keyword and e.keyword not in KEPT)
    chosen = data.draw(st.lists(st.sampled_from(keywords), unique=True, max_size=12), label="attributes")
    how = data.draw(st.lists(st.booleans(), min_size=len(chosen), max_size=len(chosen)), label="blank")

    def change(d: Dataset) -> None:
        for k, blank_it in zip(chosen, how, strict=True):
            if blank_it and d[k].VR != "SQ":
                d[k].value = None
            else:
                del d[k]

    folder = tmp_path_factory.mktemp("prop")
    check_outcome(analyze_path(write_variant(source, change, folder / "in"), folder / "out"))


SERVICE_VARIANTS = [
    "no_slice_thickness",
    "empty_slice_thickness",
    "no_pixel_spacing",
    "no_image_position",
    "no_patient_id",
]


def test_five_gaps_through_the_running_service_end_done_with_results_in_orthanc(
    node_factory, orthanc_factory, tmp_path: Path
):
    from peers import free_port

    node_port = free_port()
    pacs = orthanc_factory({"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": node_port}})
    node = node_factory(
        port=node_port, destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}]
    ).start()
    studies = []
    for name in SERVICE_VARIANTS:
        study = generate_uid()

        def change(ds: Dataset, name: str = name, study: str = study) -> None:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            VARIANTS[name](ds)

        path = write_variant(real_slices()[0], change, tmp_path / name)
        pacs.post("/modalities/node/store", {"Resources": pacs.upload([path]), "Synchronous": True})
        studies.append(study)
    wanted = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"}
    deadline = time.time() + 240
    missing = set(studies)
    while missing and time.time() < deadline:
        for study in list(missing):
            found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
            classes = {pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in found}
            if wanted <= classes:
                missing.discard(study)
        time.sleep(0.5)
    assert not missing, node.log.read_text()[-3000:]
    r = subprocess.run(
        [*DICOMNODE, "jobs", "--config", str(node.config), "--json"], capture_output=True, text=True, timeout=60
    )
    assert [j["state"] for j in json.loads(r.stdout)] == ["done"] * len(SERVICE_VARIANTS)
    import sqlite3

    con = sqlite3.connect(node.data_dir / "dicomnode.db")
    details = [json.loads(d) for (d,) in con.execute("select detail from job_events") if d and '"repairs"' in d]
    repairs = [r for d in details for r in d["repairs"]]
    con.close()
    assert any("pixel spacing unknown" in r for r in repairs) and any("PatientID" in r for r in repairs)
    assert not [e for e in node.log_lines() if e.get("level") == "error"]
