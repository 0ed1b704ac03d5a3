"""The same node on a shared PostgreSQL (a throwaway cluster of Debian's `postgresql`, started by the tests): the job
lifecycle, claims from several processes, receivers and workers as separate processes, a worker killed with -9, and
the database stopped for 10 s in the middle of a transfer."""

from __future__ import annotations

import multiprocessing
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import throwaway_postgres
from dicomgen import SeriesSpec, write_series
from peers import echo_ok, storescu, successes
from pydicom.uid import generate_uid
from stages import Stages
from test_deployment import GSPS, SR, at_pacs, cli_json, wait_done
from test_jobs import FakeAnalyzer, events, jobs, queue_study
from test_leases import _claim_all

from dicomnode.config import Config, SchedulerConfig
from storage import db
from storage.filestore import FileStore


def test_the_job_lifecycle_runs_on_postgres(pg_url: str, tmp_path: Path):
    cfg = Config()
    cfg.node.data_dir = str(tmp_path / "var")
    cfg.database.url = pg_url
    cfg.scheduler = SchedulerConfig(study_quiet_seconds=60, series_quiet_seconds=10, max_wait_seconds=600)
    engine = db.open_db(cfg.database_target)
    runner = Stages.of(cfg, engine, FileStore(cfg.data_path, fsync=False), FakeAnalyzer())
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=5), generate_uid()), time.time() - 1e3)
    runner.drain()
    (job,) = jobs(engine)
    assert job.state == "done", events(engine, job.id)
    runner.tick()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT active FROM studies").scalar() == 0
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == db.schema_head()
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    with pytest.raises(RuntimeError, match="newer than this dicomnode"):
        db.open_db(pg_url)


def test_workers_in_four_processes_never_claim_one_job_twice_on_postgres(pg_url: str):
    engine = db.open_db(pg_url)
    with engine.begin() as conn:
        for i in range(60):
            db.new_job(conn, f"1.2.{i}", 1, "queued for the test")
    ids = sorted(r.id for r in jobs(engine))
    engine.dispose()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(pg_url, f"w{k}", out)) for k in range(4)]
    for p in procs:
        p.start()
    claimed = [job for _ in procs for job in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == ids


def deployment(node_factory, pacs, url: str, shared: Path, receivers: int, workers: int) -> tuple[list, list]:
    common = {
        "database": {"url": url},
        "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}],
        "scheduler": {"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2, "lease_seconds": 3},
    }
    rs = [node_factory(f"r{i}", node={"data_dir": str(shared), "role": "receiver"}, **common) for i in range(receivers)]
    ws = [node_factory(f"w{i}", node={"data_dir": str(shared), "role": "worker"}, **common) for i in range(workers)]
    for n in rs + ws:
        n.start()
    return rs, ws


@pytest.mark.peers
def test_two_receivers_and_two_workers_on_one_postgres(node_factory, orthanc_factory, pg_url: str, tmp_path: Path):
    pacs = orthanc_factory()
    receivers, workers = deployment(node_factory, pacs, pg_url, tmp_path / "shared", 2, 2)
    studies = [generate_uid() for _ in range(12)]
    series = [write_series(tmp_path / f"s{i}", SeriesSpec("T2 SAG", slices=5), s) for i, s in enumerate(studies)]
    with ThreadPoolExecutor(12) as pool:  # all at once, to both receivers
        sent = list(pool.map(lambda i: storescu(receivers[i % 2].port, series[i]), range(12)))
    assert [successes(r.stdout + r.stderr) for r in sent] == [5] * 12
    assert wait_done(workers[0].config, 12) == ["done"] * 12
    for study in studies:
        classes = at_pacs(pacs, study)
        assert classes.count(SR) == 1 and classes.count(GSPS) == 1, classes
    roles = sorted(n["role"] for n in cli_json(receivers[0].config, "status")["nodes"] if n["up"])
    assert roles == ["receiver", "receiver", "worker", "worker"]


@pytest.mark.peers
@pytest.mark.faults
def test_a_worker_killed_mid_job_on_postgres_loses_nothing(node_factory, orthanc_factory, pg_url: str, tmp_path: Path):
    pacs = orthanc_factory()
    (receiver,), (first, second) = deployment(node_factory, pacs, pg_url, tmp_path / "shared", 1, 2)
    studies = [generate_uid() for _ in range(6)]
    for i, study in enumerate(studies):
        r = storescu(receiver.port, write_series(tmp_path / f"s{i}", SeriesSpec("T2 SAG", slices=5), study))
        assert successes(r.stdout + r.stderr) == 5
    time.sleep(1.5)
    first.kill9()  # its jobs are taken over by the second worker once their leases expire
    assert wait_done(second.config, 6) == ["done"] * 6
    for study in studies:
        classes = at_pacs(pacs, study)
        assert classes.count(SR) == 1 and classes.count(GSPS) == 1, classes


def wait_indexed(url: str, n: int, timeout: float = 60) -> None:
    engine = db.open_db(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.exec_driver_sql("SELECT count(*) FROM instances").scalar_one() >= n:
                break
        time.sleep(0.02)
    engine.dispose()


@pytest.mark.peers
@pytest.mark.faults
def test_postgres_stopped_for_10s_during_a_transfer(node_factory, tmp_path: Path):
    """The receiver answers failures (never success) for what it cannot index, C-ECHO still answers, nothing it
    acknowledged is lost, and it all flows again once the database is back, without restarting the node."""
    pg = throwaway_postgres().start()
    try:
        url = pg.database("outage")
        node = node_factory(node={"role": "receiver"}, database={"url": url}).start()
        # long enough that the transfer is still running when the database goes (the node takes ~400 a second)
        files = write_series(tmp_path / "s", SeriesSpec("T2 SAG", slices=1500), generate_uid())
        result: dict[str, subprocess.CompletedProcess[str]] = {}
        sender = threading.Thread(target=lambda: result.update(r=storescu(node.port, files)))
        sender.start()
        wait_indexed(url, 20)  # stop it mid-transfer, not after a guessed delay
        pg.stop()
        during = echo_ok(node.port)
        time.sleep(10)
        pg.start()
        sender.join(300)
        out = result["r"].stdout + result["r"].stderr
        acknowledged, refused = successes(out), out.count("Received Store Response (Refused: OutOfResources)")
        assert during and 0 < acknowledged < len(files), out[-2000:]
        # what could not be indexed was refused as out of resources (storescu stops at the first refusal)
        assert refused >= 1 and acknowledged + refused == out.count("Received Store Response"), out[-2000:]
        with db.open_db(url).connect() as conn:
            indexed = conn.exec_driver_sql("SELECT count(*) FROM instances").scalar()
        assert indexed >= acknowledged  # nothing acknowledged is missing from the index
        again = storescu(node.port, files)  # the sender retries: all stored now, same node process
        assert successes(again.stdout + again.stderr) == len(files)
        assert cli_json(node.config, "status")["instances"] == len(files)
        assert echo_ok(node.port)
    finally:
        pg.stop()
