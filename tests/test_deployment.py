"""Several processes on one database and data folder, as a deployment runs them: receivers and workers by role, each
in `dicomnode status`, and a worker killed with -9 in the middle of jobs loses nothing: every study's results reach
the PACS exactly once."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import DICOMNODE, echo_ok, free_port, storescu, successes
from pydicom.uid import generate_uid

pytestmark = pytest.mark.peers

SR, GSPS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"


def cli_json(config: Path, *args: str) -> object:
    r = subprocess.run(
        [*DICOMNODE, *args, "--config", str(config), "--json"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def at_pacs(pacs, study: str) -> list[str]:
    found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
    return sorted(pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in found)


def wait_done(config: Path, n: int, seconds: float = 180) -> list[str]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        states = [j["state"] for j in cli_json(config, "jobs")]
        if states == ["done"] * n:
            break
        time.sleep(0.5)
    return states


def test_a_receiver_and_a_worker_share_the_work_and_show_in_status(node_factory, orthanc_factory, tmp_path: Path):
    pacs = orthanc_factory()
    shared = tmp_path / "shared"
    dest = [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}]
    sched = {"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2}
    receiver = node_factory("r", node={"data_dir": str(shared), "role": "receiver"}, destinations=dest).start()
    worker = node_factory("w", node={"data_dir": str(shared), "role": "worker"}, destinations=dest, scheduler=sched)
    worker.start()
    assert echo_ok(receiver.port) and not echo_ok(worker.port)  # the worker does not listen
    study = generate_uid()
    r = storescu(receiver.port, write_series(tmp_path / "s", SeriesSpec("T2 SAG", slices=5), study))
    assert successes(r.stdout + r.stderr) == 5
    assert wait_done(receiver.config, 1) == ["done"]
    classes = at_pacs(pacs, study)
    assert classes.count(SR) == 1 and classes.count(GSPS) == 1, classes
    nodes = cli_json(receiver.config, "status")["nodes"]
    assert sorted((n["role"], n["pid"], n["up"]) for n in nodes) == sorted(
        [("receiver", receiver.pid, True), ("worker", worker.pid, True)]
    )
    worker.stop()
    (gone,) = [n for n in cli_json(receiver.config, "status")["nodes"] if n["role"] == "worker"]
    assert not gone["up"] and gone["stopped"]


@pytest.mark.faults
def test_two_nodes_on_one_folder_one_killed_every_study_once_at_the_pacs(node_factory, orthanc_factory, tmp_path: Path):
    pacs = orthanc_factory()
    shared = tmp_path / "shared"
    common = {
        "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}],
        "scheduler": {"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2, "lease_seconds": 3},
    }
    a = node_factory("a", node={"data_dir": str(shared)}, **common).start()
    b = node_factory("b", node={"data_dir": str(shared)}, **common).start()
    studies = [generate_uid() for _ in range(6)]
    for i, study in enumerate(studies):
        r = storescu((a.port, b.port)[i % 2], write_series(tmp_path / f"s{i}", SeriesSpec("T2 SAG", slices=5), study))
        assert successes(r.stdout + r.stderr) == 5
    time.sleep(1.5)  # jobs queued and running in both
    a.kill9()
    assert wait_done(b.config, 6) == ["done"] * 6
    for study in studies:
        classes = at_pacs(pacs, study)
        assert classes.count(SR) == 1 and classes.count(GSPS) == 1, classes


def test_two_receivers_on_one_port_store_everything_and_die_with_the_node(node_factory, tmp_path: Path):
    node = node_factory(node={"receivers": 2, "metrics_port": free_port()}).start()  # metrics stay the parent's
    deadline = time.time() + 60
    while time.time() < deadline:
        nodes = cli_json(node.config, "status")["nodes"]
        if sorted(n["role"] for n in nodes if n["up"]) == ["all", "receiver"]:
            break
        time.sleep(0.3)
    assert sorted(n["role"] for n in nodes if n["up"]) == ["all", "receiver"]
    child = next(n["pid"] for n in nodes if n["role"] == "receiver")
    series = [write_series(tmp_path / f"s{i}", SeriesSpec("T2 SAG", slices=10), generate_uid()) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:  # eight associations at once: the kernel spreads them over both processes
        done = list(pool.map(lambda files: storescu(node.port, files), series))
    assert [successes(r.stdout + r.stderr) for r in done] == [10] * 8
    status = cli_json(node.config, "status")
    assert status["instances"] == 80 and status["studies"] == 8
    node.kill9()
    deadline = time.time() + 30
    while time.time() < deadline and running(child):
        time.sleep(0.2)
    assert not running(child)  # no orphan keeps the port


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whichever process adopted it, maybe late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
