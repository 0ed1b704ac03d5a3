"""Results go to the destination: Orthanc stores them; a destination that is down gets them once it is back;
one that refuses ends the job failed with the reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import Orthanc
from pydicom.uid import generate_uid
from stages import Stages
from test_jobs import FakeAnalyzer, drain, events, jobs, queue_study

from dicomnode.config import Config, Destination, SchedulerConfig
from storage import db
from storage.filestore import FileStore

pytestmark = pytest.mark.peers


def runner_for(tmp_path: Path, dest: Destination, retries: int = 3) -> tuple[Stages, object, FileStore]:
    cfg = Config()
    cfg.node.data_dir = str(tmp_path / "var")
    cfg.scheduler = SchedulerConfig(study_quiet_seconds=60, series_quiet_seconds=10, max_wait_seconds=600)
    cfg.destinations = [dest]
    cfg.output.send_retries = retries
    cfg.output.retry_backoff_seconds = 0.5
    engine = db.open_db(cfg.data_path / "dicomnode.db")
    store = FileStore(cfg.data_path, fsync=False)
    return Stages.of(cfg, engine, store, FakeAnalyzer()), engine, store


def sop_classes(pacs: Orthanc, study: str) -> list[str]:
    """SOP classes Orthanc stored for the study, read back through its REST API."""
    found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
    return sorted(pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in found)


def start_job(runner: Stages, engine, store, tmp_path: Path) -> str:
    study = generate_uid()
    t0 = time.time() - 1000
    queue_study(runner, write_series(tmp_path / "in", SeriesSpec("T2 SAG", slices=3), study), t0)
    return study


def test_results_are_stored_in_orthanc(tmp_path: Path, orthanc_factory):
    pacs = orthanc_factory()
    runner, engine, store = runner_for(tmp_path, Destination("pacs", pacs.aet, "127.0.0.1", pacs.dicom))
    study = start_job(runner, engine, store, tmp_path)
    drain(runner)
    job = jobs(engine)[0]
    assert job.state == "done", events(engine, job.id)
    classes = sop_classes(pacs, study)
    assert "1.2.840.10008.5.1.4.1.1.11.1" in classes  # GSPS
    assert "1.2.840.10008.5.1.4.1.1.88.33" in classes  # Comprehensive SR


def test_destination_down_then_back_receives_the_results(tmp_path: Path):
    pacs = Orthanc(tmp_path / "late-pacs")
    runner, engine, store = runner_for(tmp_path, Destination("pacs", pacs.aet, "127.0.0.1", pacs.dicom), retries=6)
    study = start_job(runner, engine, store, tmp_path)
    drain(runner)  # the destination is down: the job waits to retry
    job = jobs(engine)[0]
    assert job.state == "sending" and job.not_before is not None
    assert "retry in" in events(engine, job.id)[-1][1]
    try:
        pacs.start()
        deadline = time.time() + 60
        while jobs(engine)[0].state == "sending" and time.time() < deadline:
            time.sleep(0.2)
            drain(runner)
        assert jobs(engine)[0].state == "done"
        found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
        assert len(found) == 2
    finally:
        pacs.stop()


def test_refusing_destination_fails_the_job_with_the_reason(tmp_path: Path):
    pacs = Orthanc(tmp_path / "strict", check_called_aet=True).start()  # rejects associations not called ORTHANC
    try:
        runner, engine, store = runner_for(tmp_path, Destination("strict", "WRONGAE", "127.0.0.1", pacs.dicom))
        start_job(runner, engine, store, tmp_path)
        deadline = time.time() + 30
        while jobs(engine)[0].state in ("queued", "sending") and time.time() < deadline:
            drain(runner)
            time.sleep(0.2)
        job = jobs(engine)[0]
        assert job.state == "failed" and job.reason_code == "send_refused", events(engine, job.id)
        assert "rejected" in job.reason
        drain(runner)
        assert jobs(engine)[0].state == "failed"  # not retried in a loop
    finally:
        pacs.stop()


@pytest.mark.parametrize(
    "status, state",
    [(0x0001, "done"), (0x0107, "done"), (0x0116, "done"), (0xB000, "done"), (0xB007, "done"), (0xC000, "failed")],
)
def test_a_warning_status_means_stored_and_a_failure_status_fails(tmp_path: Path, status: int, state: str):
    """PS3.4 warnings (coercion, attribute list / value errors, 0xBxxx) are stored objects: the job is done. A
    destination answering 'cannot understand' fails it with the status (no retry loop). The peer is a pynetdicom
    SCP answering every C-STORE with the status under test."""
    from peers import free_port
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    received = []
    scp = AE(ae_title="WARNSCP")
    scp.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(1) or status)]
    )
    try:
        runner, engine, store = runner_for(tmp_path, Destination("scp", "WARNSCP", "127.0.0.1", port))
        start_job(runner, engine, store, tmp_path)
        deadline = time.time() + 30
        while jobs(engine)[0].state in ("queued", "running", "sending") and time.time() < deadline:
            drain(runner)
            time.sleep(0.1)
        job = jobs(engine)[0]
        assert job.state == state, events(engine, job.id)
        if state == "failed":
            assert job.reason_code == "send_refused" and f"0x{status:04X}" in job.reason
        assert len(received) == 2  # SR and GSPS, each sent once
    finally:
        server.shutdown()
