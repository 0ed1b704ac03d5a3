"""Jobs are claimed with one atomic statement and leased: workers in several processes never take one job twice, and
a job whose worker stopped renewing is taken over once the lease expires."""

from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from peers import free_port
from pydicom.uid import generate_uid
from stages import Stages
from test_jobs import FakeAnalyzer, env, events, jobs, queue_study  # noqa: F401 - env is a fixture

from dicomnode.config import Destination
from dicomnode.worker import MAX_RUN_ATTEMPTS
from storage import db
from storage.states import JobState


def _claim_all(path: str, owner: str, out: multiprocessing.Queue) -> None:
    engine = db.open_db(path)  # a file path or a database URL
    got = []
    while (claimed := db.claim_job(engine, owner, 60)) is not None:
        got.append(claimed[0])
    out.put(got)


def test_workers_in_four_processes_never_claim_one_job_twice(tmp_path: Path):
    path = tmp_path / "dicomnode.db"
    engine = db.open_db(path)
    with engine.begin() as conn:
        for i in range(60):
            db.new_job(conn, f"1.2.{i}", 1, "queued for the test")
    engine.dispose()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(path), f"w{k}", out)) for k in range(4)]
    for p in procs:
        p.start()
    claimed = [job for _ in procs for job in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == list(range(1, 61))  # each job once, none left


@pytest.mark.faults
def test_a_job_whose_worker_stopped_renewing_is_taken_over_after_its_lease(env, tmp_path: Path):  # noqa: F811
    cfg, engine, store, _ = env
    cfg.scheduler.lease_seconds = 3
    first, second = Stages.of(cfg, engine, store, FakeAnalyzer()), Stages.of(cfg, engine, store, FakeAnalyzer())
    queue_study(first, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), generate_uid()), time.time() - 1e3)
    job_id, _ = first.worker.claim()
    with engine.begin() as conn:  # the first worker started the job, then died: no renewal, no release
        db.set_job_state(conn, job_id, JobState.RUNNING, "running when its worker died")
    assert second.worker.claim() is None  # the lease still holds
    first.worker.renew()  # a live worker keeps it
    time.sleep(2)
    assert second.worker.claim() is None
    time.sleep(3.5)
    assert second.worker.claim() == (job_id, "running")  # expired: taken over
    second.worker.work(job_id, "running")
    (job,) = jobs(engine)
    assert job.state == "done" and job.attempts == 1 and job.lease_owner is None


def test_a_restart_keeps_the_back_off_of_sends_nobody_holds(env, tmp_path: Path):  # noqa: F811
    cfg, engine, store, _ = env
    with engine.begin() as conn:
        job_id = db.new_job(conn, "1.2.3", 1, "for the test")
        db.set_job_state(conn, job_id, JobState.SENDING, "waiting out a back-off", not_before=time.time() + 600)
    assert Stages.of(cfg, engine, store, FakeAnalyzer()).worker.resume() == 0
    (job,) = jobs(engine)
    assert job.not_before > time.time() + 500  # another worker's start leaves it alone


def test_a_running_job_nobody_holds_is_claimed_and_fails_after_its_attempts(env):  # noqa: F811
    """A run that raised outside the analysis leaves its job running without a lease: taken again, attempts counted."""
    cfg, engine, store, _ = env
    with engine.begin() as conn:
        job_id = db.new_job(conn, "1.2.3", 1, "for the test")
        db.set_job_state(conn, job_id, JobState.RUNNING, "its run raised", attempts=MAX_RUN_ATTEMPTS)
    stages = Stages.of(cfg, engine, store, FakeAnalyzer())
    assert stages.worker.claim() == (job_id, "running")
    stages.worker.work(job_id, "running")
    (job,) = jobs(engine)
    assert job.state == "failed" and job.reason_code == "crashed_repeatedly"


def test_a_send_that_raises_counts_as_a_failed_try_and_ends_failed(env, tmp_path: Path):  # noqa: F811
    """Results files gone under a sending job: each try is counted with its back-off, then the job fails."""
    cfg, engine, store, _ = env
    cfg.destinations = [Destination("pacs", "PACS", "127.0.0.1", free_port())]  # nothing listens: transient
    cfg.output.send_retries, cfg.output.retry_backoff_seconds = 2, 600.0
    stages = Stages.of(cfg, engine, store, FakeAnalyzer())
    queue_study(stages, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), generate_uid()), time.time() - 1e3)
    stages.drain()
    (job,) = jobs(engine)
    assert job.state == "sending"
    shutil.rmtree(store.results / str(job.id))
    for _ in range(5):  # each retry made due at once
        with engine.begin() as conn:
            conn.execute(db.jobs.update().values(not_before=None))
        stages.drain()
    (job,) = jobs(engine)
    assert job.state == "failed" and job.reason_code == "send_unreachable", events(engine, job.id)
    assert any("FileNotFoundError" in (detail or "") for _, detail in events(engine, job.id))
