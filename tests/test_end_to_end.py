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
    sag = SeriesSpec("T2_TSE_SAG", slices=5, rows=pixels.shape[0], cols=pixels.shape[1],
                     pixel_spacing=tuple(float(v) for v in src.PixelSpacing), series_number=3)
    series = generate_uid()
    (folder / "sag").mkdir(parents=True)
    for i in range(sag.slices):
        ds = make_instance(sag, study, series, i, pixels=pixels)
        p = folder / "sag" / f"{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        files.append(p)
    files += write_series(folder / "t1", SeriesSpec("T1_TSE_SAG", echo_time=10, repetition_time=500, series_number=2),
                          study)
    files += write_series(folder / "ax", SeriesSpec("T2_TSE_TRA", plane="ax", slices=4, series_number=4), study)
    files += write_series(folder / "loc", SeriesSpec("localizer", slices=3, series_number=1,
                                                     image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), study)
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
    rows = con.execute("select detail from job_events union all select reason from jobs "
                       "union all select detail from associations union all select selection from jobs").fetchall()
    con.close()
    text += "\n".join(str(r[0]) for r in rows)
    for value in (*PHI, "Zyxwvutsr", "Qponm", "1945-06-07"):
        assert value not in text


def test_orthanc_to_node_to_orthanc(node_factory, orthanc_factory, shared_data, tmp_path: Path):
    from peers import free_port

    node_port = free_port()
    pacs = orthanc_factory({"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": node_port}})
    node = node_factory(port=node_port, destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1",
                                                       "port": pacs.dicom}]).start()
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
    r = subprocess.run([*DICOMNODE, "jobs", "--config", str(node.config), "--json"], capture_output=True, text=True,
                       timeout=60)
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
