"""Status totals from tallies (storage.tallies) equal a count of every row, through everything that changes them:
receiving (re-sends too), the completion rule settling studies, jobs finishing, retried and superseded, retention
purging studies and expiring old jobs, on SQLite and on PostgreSQL; and an older database gets them by migration."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from stages import UNDO_0003

from dicomnode.complete import CompletionRule
from dicomnode.config import Config
from storage import db, retention, tallies
from storage.filestore import FileStore
from storage.states import FINAL_STATES, JobState


def counted(engine: Any) -> dict[str, Any]:
    """The totals as status computed them before: every row read."""
    with engine.connect() as conn:
        by_state = dict(conn.exec_driver_sql("SELECT state, count(*) FROM jobs GROUP BY state").all())
        return {
            "instances": conn.exec_driver_sql("SELECT count(*) FROM instances").scalar(),
            "studies": conn.exec_driver_sql("SELECT count(DISTINCT study_uid) FROM instances").scalar(),
            "jobs": {s.value: by_state.get(s.value, 0) for s in JobState},
        }


def tallied(engine: Any) -> dict[str, Any]:
    with engine.connect() as conn:
        return tallies.totals(conn)


def receive(engine: Any, study: str, sop: str, at: float) -> None:
    raw = db.connect_raw(engine)
    try:
        db.record_instance(
            raw,
            {
                "sop_instance_uid": sop,
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.4",
                "study_uid": study,
                "series_uid": study + ".1",
                "transfer_syntax": "1.2.840.10008.1.2.1",
                "path": f"studies/{study}/{sop}.dcm",
                "size": 10,
                "received_at": at,
                "association_id": None,
                "calling_ae": "PACS",
            },
        )
    finally:
        raw.close()


def run_history(engine: Any, folder: Path, seed: int, steps: int) -> dict[str, int]:
    """Random operations through the node's own code; after each, the tallies must equal the counts."""
    rng = random.Random(seed)
    cfg = Config()
    cfg.node.data_dir = str(folder)
    store = FileStore(folder, fsync=False)
    rule = CompletionRule(cfg, engine, store)
    rule._series_complete = lambda uid, n: (False, False)  # type: ignore[method-assign]  # no files here: quiet time only
    clock = time.time()
    sops: list[tuple[str, str]] = []
    changed: dict[str, int] = {}  # what the history exercised: op -> times it changed something
    last: dict[str, Any] = {}
    for _ in range(steps):
        clock += 10
        op = rng.choice(["receive", "receive", "receive", "tick", "finish", "retry", "supersede", "purge", "expire"])
        with engine.connect() as conn:
            job_rows = conn.exec_driver_sql("SELECT id, study_uid, state FROM jobs").all()
        if op == "receive":
            if sops and rng.random() < 0.2:  # the same instance again: replaces its row, counted once
                study, sop = rng.choice(sops)
            else:
                study = f"1.2.{rng.randrange(12)}"
                sop = f"{study}.{rng.randrange(10**9)}"
                sops.append((study, sop))
            receive(engine, study, sop, clock)
        elif op == "tick":
            rule.tick(clock + 10**4)  # everything quiet: waiting jobs queued, final ones settled
        elif op == "finish":
            open_jobs = [j for j in job_rows if j.state in ("waiting", "queued")]
            if open_jobs:
                job = rng.choice(open_jobs)
                state = rng.choice([JobState.DONE, JobState.FAILED, JobState.NO_INPUT])
                with engine.begin() as conn:
                    db.finish_job(conn, job.id, state, None, "finished by the test")
        elif op == "retry":  # as `dicomnode retry` does: final -> queued
            failed = [j for j in job_rows if j.state in ("failed", "no_input")]
            if failed:
                with engine.begin() as conn:
                    db.set_job_state(conn, rng.choice(failed).id, JobState.QUEUED, "retried", finished=None)
        elif op == "supersede":
            done_jobs = [j for j in job_rows if j.state == "done"]
            if done_jobs:
                job = rng.choice(done_jobs)
                with engine.begin() as conn:
                    revision = conn.exec_driver_sql(
                        f"SELECT max(revision) FROM jobs WHERE study_uid = '{job.study_uid}'"
                    ).scalar()
                    new = db.new_job(conn, job.study_uid, revision + 1, "reprocess")
                    db.finish_job(conn, new, JobState.DONE, None, "done")
                    db.supersede_older(conn, new)
        elif op == "purge":
            candidates = retention.purgeable(engine)
            if candidates:
                retention.purge_study(engine, store, rng.choice(candidates)[0])
        elif op == "expire":
            retention.expire_history(engine, store, 0, 1, now=clock + 10**5)
        now = tallied(engine)
        assert now == counted(engine), (op, changed)
        if now != last:
            changed[op] = changed.get(op, 0) + 1
        last = now
    return changed


def test_tallies_equal_the_counts_through_a_random_history_on_sqlite(tmp_path: Path):
    engine = db.open_db(tmp_path / "dicomnode.db")
    for seed in range(3):
        changed = run_history(engine, tmp_path, seed, 250)
        # every kind of change happened, or the equality above proved little
        assert set(changed) >= {"receive", "tick", "finish", "retry", "supersede", "purge", "expire"}, changed


@pytest.mark.peers
def test_tallies_equal_the_counts_through_a_random_history_on_postgresql(pg_url: str, tmp_path: Path):
    engine = db.open_db(pg_url)
    try:
        assert len(run_history(engine, tmp_path, 7, 250)) >= 6
    finally:
        engine.dispose()


def test_the_tally_is_settled_once_when_two_rules_settle_one_study(tmp_path: Path):
    """The completion rule runs in every worker: two settling the same study must not count it twice."""
    engine = db.open_db(tmp_path / "dicomnode.db")
    receive(engine, "1.2", "1.2.1", time.time())
    with engine.begin() as conn:
        db.new_job(conn, "1.2", 1, "arrived", JobState.DONE)
        assert tallies.settle(conn, [("1.2", 1)]) == 1
        assert tallies.settle(conn, [("1.2", 1)]) == 0  # the second rule finds it settled already
    assert tallied(engine) == counted(engine)
    assert tallied(engine)["instances"] == 1 and tallied(engine)["studies"] == 1


def test_status_reads_the_tallies_not_the_history(tmp_path: Path):
    """A settled study's instances come from the tally: with its rows gone behind the tally's back (which nothing in
    the node does), status still shows them, so it did not count the rows."""
    engine = db.open_db(tmp_path / "dicomnode.db")
    for k in range(3):
        receive(engine, "1.2", f"1.2.{k}", time.time())
    with engine.begin() as conn:
        db.new_job(conn, "1.2", 1, "arrived", JobState.DONE)
        tallies.settle(conn, [("1.2", 3)])
        conn.exec_driver_sql("DELETE FROM instances")
    assert tallied(engine)["instances"] == 3 and counted(engine)["instances"] == 0


def test_an_older_database_gets_its_tallies_from_migration_0003(tmp_path: Path):
    path = tmp_path / "old.db"
    engine = db.open_db(path)
    for k in range(4):
        receive(engine, "1.2", f"1.2.{k}", time.time())
    receive(engine, "1.3", "1.3.0", time.time())
    with engine.begin() as conn:
        db.new_job(conn, "1.2", 1, "arrived", JobState.DONE)
        db.new_job(conn, "1.3", 1, "arrived", JobState.FAILED)
        conn.exec_driver_sql("UPDATE studies SET active = 0 WHERE study_uid = '1.2'")
        for stmt in (  # back to schema 0002
            *UNDO_0003,
            "UPDATE alembic_version SET version_num = '0002'",
        ):
            conn.exec_driver_sql(stmt)
    engine.dispose()
    engine = db.open_db(path)
    assert tallied(engine) == counted(engine)
    assert tallied(engine)["instances"] == 5 and tallied(engine)["jobs"]["failed"] == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT tallied FROM studies WHERE study_uid = '1.2'").scalar() == 4
    assert set(FINAL_STATES) <= {JobState(s) for s in tallied(engine)["jobs"]}
