"""Kill -9 of the node at several points while studies are being analysed and sent: after restarts every study
has its results in the PACS exactly once, every job ends done, and the node still answers C-ECHO."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import DICOMNODE, echo_ok, storescu, successes
from pydicom.uid import generate_uid

pytestmark = [pytest.mark.peers, pytest.mark.faults]

SR, GSPS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"


def test_kill9_during_jobs_results_exactly_once(node_factory, orthanc_factory, tmp_path: Path):
    pacs = orthanc_factory()
    node = node_factory(
        destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}],
        scheduler={"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2},
    ).start()
    studies = [generate_uid() for _ in range(4)]
    for i, study in enumerate(studies):
        r = storescu(node.port, write_series(tmp_path / f"s{i}", SeriesSpec("T2 SAG", slices=5), study))
        assert successes(r.stdout + r.stderr) == 5
    for delay in (1.2, 0.7, 0.9):  # kills land while jobs are queued, running or sending
        time.sleep(delay)
        node.kill9()
        node.start()

    def job_states() -> list[str]:
        r = subprocess.run(
            [*DICOMNODE, "jobs", "--config", str(node.config), "--json"], capture_output=True, text=True, timeout=60
        )
        return [j["state"] for j in json.loads(r.stdout)]

    deadline = time.time() + 180
    while time.time() < deadline and (len(job_states()) < 4 or set(job_states()) != {"done"}):
        time.sleep(0.5)
    assert job_states() == ["done"] * 4
    for study in studies:
        found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
        classes = sorted(pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in found)
        assert classes.count(SR) == 1 and classes.count(GSPS) == 1, classes
    assert echo_ok(node.port)


def test_pacs_down_for_half_a_minute_then_back(node_factory, tmp_path: Path):
    """The PACS is down when the results are ready and for half a minute after (five back-off steps); the node keeps
    receiving and answering, retries with back-off, and the results arrive exactly once when the PACS is back."""
    from peers import Orthanc

    pacs = Orthanc(tmp_path / "pacs")  # same ports and storage across the outage
    try:  # stopped by its PID even when the node fails to start
        pacs.start()
        node = node_factory(
            destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}],
            scheduler={"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2},
            output={"send_retries": 10, "retry_backoff_seconds": 1},
        ).start()
        pacs.stop()
        down_at = time.time()
        study = generate_uid()
        r = storescu(node.port, write_series(tmp_path / "s", SeriesSpec("T2 SAG", slices=5), study))
        assert successes(r.stdout + r.stderr) == 5

        def job() -> dict:
            r = subprocess.run(
                [*DICOMNODE, "jobs", "--config", str(node.config), "--json"], capture_output=True, text=True, timeout=60
            )
            rows = json.loads(r.stdout)
            return rows[0] if rows else {}

        while time.time() - down_at < 30:
            time.sleep(2)
            assert echo_ok(node.port)  # the node answers throughout
        assert job().get("state") == "sending"  # still trying, not given up
        pacs.start()
        deadline = time.time() + 90  # the next back-off step is at most 32 s away
        while time.time() < deadline and job().get("state") != "done":
            time.sleep(1)
        assert job().get("state") == "done"
        found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
        classes = sorted(pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in found)
        assert classes.count(SR) == 1 and classes.count(GSPS) == 1, classes
    finally:
        pacs.stop()
