"""Bad input ends in a clean rejection or a clear job state; the service stays up."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from dicomgen import SeriesSpec, write_series
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import DICOMNODE, echo_ok
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage

from dicomnode.selection import plane_of, weighting_of
from storage.filestore import read_uids


def send_raw(port: int, files: list[Path]) -> list[int | None]:
    """With chunked sending pynetdicom sends a file's bytes after its meta unread, so broken files reach the node
    as they are."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return _send(port, files)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def _send(port: int, files: list[Path]) -> list[int | None]:
    ae = AE("BADSENDER")
    ae.add_requested_context(MRImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    out = []
    for f in files:
        status = assoc.send_c_store(f)
        out.append(int(status.Status) if status else None)
    assoc.release()
    return out


def meta_and_body(path: Path) -> tuple[bytes, bytes]:
    raw = path.read_bytes()
    n = 132 + 12 + pydicom.dcmread(path, stop_before_pixels=True).file_meta.FileMetaInformationGroupLength
    return raw[:n], raw[n:]


@pytest.mark.peers
def test_broken_instances_are_refused_or_fail_their_job_and_the_node_stays_up(node_factory, tmp_path: Path):
    node = node_factory(scheduler={"study_quiet_seconds": 1, "poll_seconds": 0.2}).start()
    good = write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3, rows=64, cols=64), generate_uid())
    meta, body = meta_and_body(good[0])
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(meta + b"\x00\xff" * 50 + b"not dicom at all")
    truncated = []
    for i, f in enumerate(good):  # pixel data cut short: the header (and UIDs) are intact
        m, b = meta_and_body(f)
        t = tmp_path / f"trunc{i}.dcm"
        t.write_bytes(m + b[: len(b) - 3000])
        truncated.append(t)
    # A wrong VR length before the UIDs (PatientName claims 60000 bytes): the header cannot be read.
    m, b = meta_and_body(
        write_series(tmp_path / "b", SeriesSpec("T2 SAG", slices=1, rows=64, cols=64), generate_uid())[0]
    )
    at = b.index(b"\x10\x00\x10\x00PN")
    bad_vr = tmp_path / "badvr.dcm"
    bad_vr.write_bytes(m + b[: at + 6] + (60000).to_bytes(2, "little") + b[at + 8 :])
    statuses = send_raw(node.port, [garbage, bad_vr, *truncated])
    assert statuses[0] is not None and statuses[0] != 0x0000  # refused, not stored
    assert statuses[1] is not None and statuses[1] != 0x0000
    assert statuses[2:] == [0x0000] * 3  # stored as sent: the damage shows when the slice is read
    deadline = time.time() + 60
    jobs: list[dict] = []
    while time.time() < deadline:
        r = subprocess.run(
            [*DICOMNODE, "jobs", "--config", str(node.config), "--json"], capture_output=True, text=True, timeout=60
        )
        jobs = json.loads(r.stdout)
        if jobs and jobs[0]["state"] in ("failed", "no_input", "done"):
            break
        time.sleep(0.5)
    assert jobs[0]["state"] == "failed" and jobs[0]["reason_code"] == "unreadable_pixels", jobs
    assert echo_ok(node.port)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=2048),
    st.sampled_from(
        ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "9.9.9"]
    ),
)
def test_read_uids_never_hangs_or_crashes_unexpectedly(data: bytes, ts: str):
    try:
        study, series = read_uids(data, ts)
    except ValueError as exc:  # the one error the SCP expects: it answers "cannot understand"
        assert "unreadable" in str(exc)
    else:
        assert isinstance(study, str) and isinstance(series, str)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.floats(allow_nan=True), st.text(max_size=5), st.none()), max_size=8),
    st.text(max_size=40),
    st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=6)),
)
def test_selection_header_parsing_accepts_anything(iop, description, echo_time):
    plane, normal = plane_of(iop)
    assert plane in ("sagittal", "coronal", "axial", "oblique", "unknown")

    class H:
        def get(self, name, default=None):
            return {"EchoTime": echo_time, "RepetitionTime": "3000", "InversionTime": None}.get(name, default)

    weighting, fs = weighting_of(description, H())  # type: ignore[arg-type]
    assert weighting in ("T1", "T2", "STIR", "unknown") and isinstance(fs, bool)


@pytest.mark.peers
def test_uids_with_path_characters_stay_inside_the_store(node_factory, tmp_path: Path):
    node = node_factory().start()
    evil = []
    for i, uid in enumerate(["../../../tmp/evil", "1.2/../../x", "/etc/passwd"]):
        ds = pydicom.dcmread(
            write_series(tmp_path / f"e{i}", SeriesSpec("T2 SAG", slices=1, rows=32, cols=32), generate_uid())[0]
        )
        ds.StudyInstanceUID = uid
        ds.SeriesInstanceUID = uid + ".s"
        p = tmp_path / f"evil{i}.dcm"
        ds.save_as(p)
        evil.append(p)
    statuses = send_raw(node.port, evil)
    assert all(s is not None for s in statuses)
    stored = [p for p in node.data_dir.rglob("*.dcm")]
    root = node.data_dir.resolve()
    assert all(p.resolve().is_relative_to(root) for p in stored)
    assert not (tmp_path.parent / "evil").exists() and not Path("/tmp/evil").exists()
    assert statuses == [0x0000] * 3 and len(stored) == 3  # accepted, under hashed folder names
    assert echo_ok(node.port)
