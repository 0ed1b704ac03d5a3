"""Orthanc (the PACS) sends a multi-series lumbar study; the node's SR and GSPS arrive back in Orthanc without
any manual step; the job ends done. Uses the real shipped model on a real annotated slice."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomgen import SeriesSpec, make_instance, write_series
from peers import DICOMNODE
from pydicom.uid import generate_uid

from ai.data import load_dataset

pytestmark = [pytest.mark.peers, pytest.mark.data]


def build_study(shared: Path, folder: Path) -> tuple[str, list[Path]]:
    real = load_dataset(shared)[5]
    src = pydicom.dcmread(real.path)
    pixels = src.pixel_array.astype(np.uint16)
    study = generate_uid()
    files: list[Path] = []
    sag = SeriesSpec(
        "T2_TSE_SAG",
        slices=5,
        rows=pixels.shape[0],
        cols=pixels.shape[1],
        pixel_spacing=tuple(float(v) for v in src.PixelSpacing),
        series_number=3,
    )
    series = generate_uid()
    (folder / "sag").mkdir(parents=True)
    for i in range(sag.slices):
        ds = make_instance(sag, study, series, i, pixels=pixels)
        p = folder / "sag" / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        files.append(p)
    files += write_series(
        folder / "t1", SeriesSpec("T1_TSE_SAG", echo_time=10, repetition_time=500, series_number=2), study
    )
    files += write_series(folder / "ax", SeriesSpec("T2_TSE_TRA", plane="ax", slices=4, series_number=4), study)
    files += write_series(
        folder / "loc",
        SeriesSpec("localizer", slices=3, series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        study,
    )
    for f in files:  # distinctive patient data, to prove it never reaches a log or a log table
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI
        ds.save_as(f)
    return study, files


PHI = ("Zyxwvutsr^Qponm", "PHI-778899", "19450607")


def assert_no_phi(node) -> None:
    import sqlite3

    text = node.log.read_text(errors="replace")
    con = sqlite3.connect(node.data_dir / "dicomnode.db")
    rows = con.execute(
        "select detail from job_events union all select reason from jobs "
        "union all select detail from associations union all select selection from jobs"
    ).fetchall()
    con.close()
    text += "\n".join(str(r[0]) for r in rows)
    for value in (*PHI, "Zyxwvutsr", "Qponm", "1945-06-07"):
        assert value not in text


def test_orthanc_to_node_to_orthanc(node_factory, orthanc_factory, shared_data, tmp_path: Path):
    from peers import free_port

    node_port = free_port()
    pacs = orthanc_factory({"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": node_port}})
    node = node_factory(
        port=node_port, destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}]
    ).start()
    study, files = build_study(shared_data, tmp_path / "study")
    orthanc_id = pacs.upload(files)[0]
    before = len(pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}}))
    pacs.post("/modalities/node/store", {"Resources": [orthanc_id], "Synchronous": True})
    sent_at = time.time()
    classes: set[str] = set()
    deadline = time.time() + 240
    while time.time() < deadline:
        found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
        if len(found) >= before + 2:
            classes = {pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in found}
            if {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"} <= classes:
                break
        time.sleep(0.5)
    latency = time.time() - sent_at
    assert {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"} <= classes, node.log.read_text()[-3000:]
    r = subprocess.run(
        [*DICOMNODE, "jobs", "--config", str(node.config), "--json"], capture_output=True, text=True, timeout=60
    )
    jobs = json.loads(r.stdout)
    assert [j["state"] for j in jobs] == ["done"]
    assert jobs[0]["selection"]["series_description"] == "T2_TSE_SAG"
    assert len(jobs[0]["selection"]["candidates"]) == 3
    node.stop()
    assert_no_phi(node)
    loaded = [e for e in node.log_lines() if e.get("event") == "model loaded"]
    assert loaded and loaded[0]["int8_graders"] is True  # the admin sees how the CPU node grades
    (tmp_path / "latency.json").write_text(json.dumps({"latency_s": round(latency, 2)}))
    print(f"\nlast instance pushed -> SR+GSPS stored in Orthanc: {latency:.1f} s")


def test_a_multi_frame_series_goes_through_and_the_marks_land_on_the_analysed_frame(
    node_factory, orthanc_factory, shared_data, tmp_path: Path
):
    """A sagittal T2 series sent as one Legacy Converted Enhanced MR object (five frames; the real slice is the
    middle one, the others no anatomy): the job ends done, the SR and GSPS reach Orthanc, both reference the
    middle frame, and DCMTK draws the GSPS on that frame only."""
    import highdicom as hd
    from dicomgen import write_multiframe
    from peers import free_port

    node_port = free_port()
    pacs = orthanc_factory({"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": node_port}})
    node = node_factory(
        port=node_port, destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}]
    ).start()
    src = pydicom.dcmread(load_dataset(shared_data)[5].path)
    real = src.pixel_array.astype(np.uint16)
    from dicomgen import phantom

    frames = [phantom(*real.shape, seed=k) for k in range(5)]
    frames[2] = real
    spec = SeriesSpec(
        "T2_TSE_SAG",
        slices=5,
        rows=real.shape[0],
        cols=real.shape[1],
        pixel_spacing=tuple(float(v) for v in src.PixelSpacing),
    )
    study = generate_uid()
    mf = write_multiframe(tmp_path / "mf.dcm", spec, study, pixels=frames)
    pacs.post("/modalities/node/store", {"Resources": pacs.upload([mf]), "Synchronous": True})
    wanted = {"1.2.840.10008.5.1.4.1.1.88.33": "sr", "1.2.840.10008.5.1.4.1.1.11.1": "gsps"}
    got: dict[str, Path] = {}
    deadline = time.time() + 240
    while time.time() < deadline and len(got) < 2:
        for i in pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}}):
            kind = wanted.get(pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"])
            if kind and kind not in got:
                import urllib.request

                got[kind] = tmp_path / f"{kind}.dcm"
                got[kind].write_bytes(urllib.request.urlopen(pacs.url(f"/instances/{i}/file"), timeout=30).read())
        time.sleep(0.5)
    assert set(got) == {"sr", "gsps"}, node.log.read_text()[-3000:]
    r = subprocess.run(
        [*DICOMNODE, "jobs", "--config", str(node.config), "--json"], capture_output=True, text=True, timeout=60
    )
    job = json.loads(r.stdout)[0]
    assert job["state"] == "done" and job["selection"]["chosen_frame"] == 3, job
    gsps = pydicom.dcmread(got["gsps"])
    frames = {int(item.ReferencedImageSequence[0].ReferencedFrameNumber) for item in gsps.GraphicAnnotationSequence}
    assert frames == {3}
    sr = hd.sr.srread(got["sr"])
    for group in sr.content.get_planar_roi_measurement_groups():
        assert int(group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber) == 3
    for path in got.values():
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        assert not [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")], path

    # DCMTK applies a presentation state's frame references: its dump (of frame 1) shows none of the marks; the same
    # presentation state pointed at frame 1 shows them all, at the node's coordinates
    def dump(pr: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["dcmp2pgm", "-v", "-p", str(pr), str(mf), "/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert "Number of graphic objects: 0" in dump(got["gsps"]).stderr
    assert all(f"Number of graphic objects: {n}" not in dump(got["gsps"]).stderr for n in range(1, 12))
    for item in gsps.GraphicAnnotationSequence:
        item.ReferencedImageSequence[0].ReferencedFrameNumber = 1
    gsps.save_as(tmp_path / "frame1.dcm")
    shown = dump(tmp_path / "frame1.dcm").stderr
    assert "Number of graphic objects: 0" not in shown.split("Graphic Layer #1")[1].split("Graphic Layer #2")[0], shown
