"""Jobs are claimed with one atomic statement and leased: workers in several processes never take one job twice, and
a job whose worker stopped renewing is taken over once the lease expires."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
from dicomgen import SeriesSpec, write_series
from pydicom.uid import generate_uid
from stages import Stages
from test_jobs import FakeAnalyzer, env, jobs, queue_study  # noqa: F401 - env is a fixture

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
