"""DICOMweb destinations: the SR and GSPS go to Orthanc's DICOMweb plugin (Debian `orthanc-dicomweb`) with STOW-RS and
are found there with QIDO-RS exactly once, and a rejection note after them; a 4xx answer fails the job as permanent;
a 503 or a refused connection is retried with back-off like a DIMSE peer that is down."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from peers import Orthanc
from test_jobs import events, jobs
from test_sending import runner_for, start_job

from dicomnode.config import Config, Destination
from dicomnode.reject import reject_job
from dicomnode.stow import store

pytestmark = pytest.mark.peers

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SR, GSPS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def dicomweb_orthanc(folder: Path) -> Orthanc:
    if not PLUGIN.is_file():
        pytest.skip(f"Orthanc's DICOMweb plugin not installed ({PLUGIN}): run the README test command")
    return Orthanc(folder, extra={"Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})


def qido_classes(pacs: Orthanc, study: str) -> list[str]:
    client = DICOMwebClient(url=pacs.url("/dicom-web"))
    found = client.search_for_instances(study_instance_uid=study)
    return sorted(str(item["00080016"]["Value"][0]) for item in found)


def settle(runner, engine, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while jobs(engine)[0].state in ("queued", "running", "sending") and time.time() < deadline:
        runner.drain()
        time.sleep(0.2)


def test_results_arrive_by_stow_rs_exactly_once(tmp_path: Path):
    pacs = dicomweb_orthanc(tmp_path / "pacs").start()
    try:
        dest = Destination("archive", protocol="dicomweb", url=pacs.url("/dicom-web"))
        runner, engine, store_ = runner_for(tmp_path, dest)
        study = start_job(runner, engine, store_, tmp_path)
        settle(runner, engine)
        job = jobs(engine)[0]
        assert job.state == "done", events(engine, job.id)
        assert qido_classes(pacs, study) == sorted([SR, GSPS])
        results = sorted(p for p in (store_.results / str(job.id)).glob("*.dcm"))
        again = store(results, pacs.url("/dicom-web"))  # sent twice: the same UIDs replace themselves
        assert all(r.ok for r in again)
        assert qido_classes(pacs, study) == sorted([SR, GSPS])
        assert reject_job(engine, store_, job.id, "dr_a") == "sending"  # a reviewer retracts it: the note by STOW-RS
        settle(runner, engine)
        assert jobs(engine)[0].state == "rejected", events(engine, job.id)
        assert qido_classes(pacs, study) == sorted([SR, GSPS, KOS])
    finally:
        pacs.stop()


def test_a_4xx_answer_fails_the_job_as_permanent(tmp_path: Path):
    pacs = dicomweb_orthanc(tmp_path / "pacs").start()
    try:
        dest = Destination("archive", protocol="dicomweb", url=pacs.url("/no-such-root"))
        runner, engine, store_ = runner_for(tmp_path, dest)
        start_job(runner, engine, store_, tmp_path)
        settle(runner, engine)
        job = jobs(engine)[0]
        assert job.state == "failed" and job.reason_code == "send_refused", events(engine, job.id)
        assert "HTTP 404" in job.reason
    finally:
        pacs.stop()


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_503_and_a_refused_connection_are_retried_until_the_archive_answers(tmp_path: Path):
    busy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    pacs = dicomweb_orthanc(tmp_path / "late")
    dest = Destination("archive", protocol="dicomweb", url=pacs.url("/dicom-web"))
    runner, engine, store_ = runner_for(tmp_path, dest, retries=6)
    study = start_job(runner, engine, store_, tmp_path)
    runner.drain()  # nothing listens yet: refused, retried later
    job = jobs(engine)[0]
    assert job.state == "sending" and "retry in" in events(engine, job.id)[-1][1]
    written = sorted((store_.results / str(job.id)).glob("*.dcm"))
    answered = store(written, f"http://127.0.0.1:{busy.server_port}/dicom-web")
    assert [(r.ok, r.kind, r.detail) for r in answered] == [(False, "transient", "HTTP 503 from STOW-RS")] * 2
    busy.shutdown()
    try:
        pacs.start()
        settle(runner, engine)
        assert jobs(engine)[0].state == "done"
        assert qido_classes(pacs, study) == sorted([SR, GSPS])
    finally:
        pacs.stop()


def test_a_dicomweb_destination_needs_its_url():
    with pytest.raises(ValueError, match="dicomweb needs url"):
        Destination("archive", protocol="dicomweb")
    with pytest.raises(ValueError, match="needs ae_title, host and port"):
        Destination("pacs", ae_title="PACS")
    with pytest.raises(ValueError, match="a dicomweb url uses https"):
        Destination("archive", protocol="dicomweb", url="http://a/dicom-web", tls=True)
    two = [Destination("pacs", "PACS", "h", 104), Destination("archive", protocol="dicomweb", url="http://a/dw")]
    with pytest.raises(ValueError, match="with several, each needs ae_title"):
        Config(destinations=two)
