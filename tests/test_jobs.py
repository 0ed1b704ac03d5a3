"""Job lifecycle, in process, with a fake analyser (the end-to-end test uses the real models)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomgen import SeriesSpec, write_series
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from stages import UNDO_0003, Stages

from ai.labels import LEVELS, level_kind
from ai.results import LevelResult, Located
from dicomnode.admin import reprocess_study, retry_job
from dicomnode.config import Config, SchedulerConfig
from storage import db
from storage.filestore import FileStore
from storage.states import JobState


class FakeAnalyzer:
    """The pipeline's two calls (locate every candidate slice, grade the chosen one) without a network."""

    version = "fake-1"

    def locate_slices(self, slices):
        found = []
        for pixels in slices:
            rows, cols = pixels.shape
            xy = np.array([(cols / 2, rows * (0.1 + 0.07 * i)) for i in range(len(LEVELS))])
            found.append(Located(pixels, xy, np.full(len(LEVELS), 0.95), np.ones(len(LEVELS))))
        return found

    def grade_slice(self, found):
        return [
            LevelResult(lv, level_kind(lv), float(x), float(y), ["v3"] if lv == "L4-L5" else ["v1"], 0.9, 0.95)
            for lv, (x, y) in zip(LEVELS, found.xy, strict=True)
        ]


@pytest.fixture
def env(tmp_path: Path):
    cfg = Config()
    cfg.node.data_dir = str(tmp_path / "var")
    cfg.scheduler = SchedulerConfig(
        study_quiet_seconds=60, series_quiet_seconds=10, announced_quiet_seconds=10, max_wait_seconds=600
    )
    engine = db.open_db(cfg.data_path / "dicomnode.db")
    store = FileStore(cfg.data_path, fsync=False)
    runner = Stages.of(cfg, engine, store, FakeAnalyzer())
    return cfg, engine, store, runner


def ingest(engine, store: FileStore, files: list[Path], at: float) -> None:
    """What the SCP does for each instance, with a chosen arrival time."""
    conn = db.connect_raw(engine)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        dest = store.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        store.write(dest, f.read_bytes())
        db.record_instance(
            conn,
            {
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "sop_class_uid": str(ds.SOPClassUID),
                "study_uid": str(ds.StudyInstanceUID),
                "series_uid": str(ds.SeriesInstanceUID),
                "transfer_syntax": "1.2.840.10008.1.2.1",
                "path": str(dest.relative_to(store.root)),
                "size": dest.stat().st_size,
                "received_at": at,
                "association_id": None,
                "calling_ae": "PACS",
            },
        )
    conn.close()


def jobs(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(db.jobs).order_by(db.jobs.c.id)).all()


def events(engine, job_id: int) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            (r.state, r.detail)
            for r in conn.execute(
                select(db.job_events).where(db.job_events.c.job_id == job_id).order_by(db.job_events.c.id)
            )
        ]


def queue_study(runner: Stages, files: list[Path], t0: float) -> None:
    """Received at t0, then quiet long enough to be queued."""
    ingest(runner.engine, runner.store, files, t0)
    runner.tick(now=t0 + 1)
    runner.tick(now=t0 + 100)


def drain(runner: Stages) -> None:
    runner.drain()


def test_quiet_study_runs_once_to_done_with_outputs_and_events(env, tmp_path: Path):
    cfg, engine, store, runner = env
    t0 = time.time() - 1000
    ingest(engine, store, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=5), generate_uid()), t0)
    runner.tick(now=t0 + 1)
    assert [j.state for j in jobs(engine)] == ["waiting"]
    runner.tick(now=t0 + 5)  # neither quiet long enough nor complete (series quiet 10 s)
    assert jobs(engine)[0].state == "waiting"
    runner.tick(now=t0 + 61)
    assert jobs(engine)[0].state == "queued"
    drain(runner)
    job = jobs(engine)[0]
    assert job.state == "done" and job.model_version == "fake-1"
    assert json.loads(job.selection)["series_description"] == "T2 SAG"
    assert (store.root / "results" / str(job.id) / "sr.dcm").exists()
    assert (store.root / "results" / str(job.id) / "gsps.dcm").exists()
    states = [s for s, _ in events(engine, job.id)]
    assert states == ["waiting", "queued", "running", "running", "done"]
    drain(runner)
    assert len(jobs(engine)) == 1  # nothing runs twice


def test_complete_sagittal_t2_starts_early(env, tmp_path: Path):
    cfg, engine, store, runner = env
    t0 = time.time() - 1000
    ingest(engine, store, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=5), generate_uid()), t0)
    runner.tick(now=t0 + 1)
    runner.tick(now=t0 + 11)  # series quiet, stack contiguous with the announced count
    job = jobs(engine)[0]
    assert job.state == "queued"
    assert "series complete" in events(engine, job.id)[-1][1]


def test_a_stack_with_the_announced_count_starts_at_once_one_without_after_the_series_quiet(env, tmp_path: Path):
    cfg, engine, store, runner = env
    cfg.scheduler.announced_quiet_seconds = 0  # the shipped value
    t0 = time.time() - 1000
    announced = write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=5), generate_uid())
    unannounced = write_series(tmp_path / "b", SeriesSpec("T2 SAG", slices=5), generate_uid())
    short = write_series(tmp_path / "c", SeriesSpec("T2 SAG", slices=6), generate_uid())[:5]  # 5 of 6 announced
    for f in unannounced:
        ds = pydicom.dcmread(f)
        del ds.ImagesInAcquisition
        ds.save_as(f)
    for files in (announced, unannounced, short):
        ingest(engine, store, files, t0)
    runner.tick(now=t0 + 0.1)  # the jobs are made
    runner.tick(now=t0 + 0.2)
    state = {j.study_uid: j for j in jobs(engine)}
    uid = lambda files: str(pydicom.dcmread(files[0]).StudyInstanceUID)  # noqa: E731
    assert state[uid(announced)].state == "queued"
    assert "count the scanner announced" in events(engine, state[uid(announced)].id)[-1][1]
    assert state[uid(unannounced)].state == "waiting" and state[uid(short)].state == "waiting"
    runner.tick(now=t0 + 10.5)
    state = {j.study_uid: j for j in jobs(engine)}
    assert state[uid(unannounced)].state == "queued" and state[uid(short)].state == "waiting"


def test_incomplete_stack_waits_for_study_quiet_or_max_wait(env, tmp_path: Path):
    cfg, engine, store, runner = env
    t0 = time.time() - 1000
    files = write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=6), generate_uid())
    ingest(engine, store, files[:3] + files[4:], t0)  # a hole
    runner.tick(now=t0 + 1)
    runner.tick(now=t0 + 30)
    assert jobs(engine)[0].state == "waiting"
    runner.tick(now=t0 + 61)
    assert jobs(engine)[0].state == "queued"


def test_no_sagittal_t2_ends_no_input_with_reason(env, tmp_path: Path):
    cfg, engine, store, runner = env
    t0 = time.time() - 1000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 TRA", plane="ax"), generate_uid()), t0)
    drain(runner)
    job = jobs(engine)[0]
    assert job.state == "no_input" and job.reason_code == "no_input" and "axial plane" in job.reason


def test_missing_pixel_data_fails_with_a_clear_reason(env, tmp_path: Path):
    cfg, engine, store, runner = env
    t0 = time.time() - 1000
    files = write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), generate_uid())
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PixelData
        ds.save_as(f)
    queue_study(runner, files, t0)
    drain(runner)
    job = jobs(engine)[0]
    assert job.state == "failed" and job.reason_code == "unreadable_pixels"
    ok, msg = retry_job(cfg, job.id)
    assert ok and jobs(engine)[0].state == "queued"
    assert retry_job(cfg, job.id)[0] is False  # only failed/no_input jobs


def test_new_instances_make_a_revision_only_when_the_selection_changes(env, tmp_path: Path):
    cfg, engine, store, runner = env
    study = generate_uid()
    t0 = time.time() - 5000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=5), study), t0)
    drain(runner)
    # an axial series arrives later: the selected series is unchanged
    ingest(
        engine, store, write_series(tmp_path / "b", SeriesSpec("T2 TRA", plane="ax", series_number=2), study), t0 + 200
    )
    runner.tick(now=t0 + 300)
    assert len(jobs(engine)) == 1
    assert "did not change" in events(engine, jobs(engine)[0].id)[-1][1]
    # a better sagittal T2 (more slices) arrives: a new revision supersedes the first
    ingest(
        engine, store, write_series(tmp_path / "c", SeriesSpec("T2 SAG 2", slices=9, series_number=3), study), t0 + 400
    )
    runner.tick(now=t0 + 500)
    first, second = jobs(engine)
    assert second.revision == 2 and second.state == "queued"
    drain(runner)
    first, second = jobs(engine)
    assert second.state == "done" and first.state == "superseded"
    assert json.loads(second.selection)["series_description"] == "T2 SAG 2"


def active(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(db.studies.c.study_uid, db.studies.c.active)).all())


def test_the_rule_looks_only_at_studies_with_something_to_do(env, tmp_path: Path):
    cfg, engine, store, runner = env
    study = generate_uid()
    t0 = time.time() - 5000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=5), study), t0)
    assert active(engine) == {study: 1}  # queued: still the rule's until its job ends
    drain(runner)
    runner.tick(now=t0 + 150)
    assert active(engine) == {study: 0}  # done with every instance seen: out of the rule's reads
    runner.tick(now=t0 + 160)
    assert len(jobs(engine)) == 1
    more = write_series(tmp_path / "b", SeriesSpec("T2 SAG 2", slices=9, series_number=3), study)
    ingest(engine, store, more, t0 + 200)
    assert active(engine) == {study: 1}  # a new instance brings it back
    runner.tick(now=t0 + 300)
    assert [j.revision for j in jobs(engine)] == [1, 2]


def test_a_settled_study_stays_active_when_an_instance_arrived_meanwhile(env, tmp_path: Path):
    """The rule clears `active` only for the instance count it read: one that arrived in between keeps it."""
    cfg, engine, store, runner = env
    study = generate_uid()
    t0 = time.time() - 5000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), study), t0)
    drain(runner)
    with engine.begin() as conn:  # as if the receive path counted one more between the rule's read and its write
        conn.execute(db.studies.update().values(instances=db.studies.c.instances + 1))
    runner.tick(now=t0 + 150)
    assert active(engine) == {study: 1}


def test_one_job_per_study_revision_is_a_constraint(env):
    cfg, engine, store, runner = env
    with engine.begin() as conn:
        db.new_job(conn, "1.2.3", 1, "first")
    with pytest.raises(IntegrityError), engine.begin() as conn:
        db.new_job(conn, "1.2.3", 1, "a second job for the same revision")


def test_a_version_1_database_is_migrated_in_place_by_alembic(tmp_path: Path):
    path = tmp_path / "old.db"
    engine = db.open_db(path)
    with engine.begin() as conn:  # back to the version 1 schema, with a study in it
        for stmt in (
            *UNDO_0003,
            "DROP INDEX ix_studies_active",
            "DROP INDEX ux_jobs_study_revision",
            "ALTER TABLE studies DROP COLUMN active",
            "DROP TABLE alembic_version",
            "DROP INDEX ix_jobs_lease_owner",
            "DROP TABLE nodes",
            "ALTER TABLE jobs DROP COLUMN lease_owner",
            "ALTER TABLE jobs DROP COLUMN lease_until",
            "PRAGMA user_version=1",
        ):
            conn.exec_driver_sql(stmt)
        conn.exec_driver_sql(
            "INSERT INTO studies (study_uid, first_received, last_received, instances) VALUES ('1.2', 0, 0, 3)"
        )
        conn.exec_driver_sql(  # a study retention removed: nothing for the completion rule after the upgrade
            "INSERT INTO studies (study_uid, first_received, last_received, instances, purged_at)"
            " VALUES ('1.3', 0, 0, 3, 5)"
        )
        for _ in range(2):  # two jobs of one revision, as a reprocess racing the rule could make before
            conn.exec_driver_sql(
                "INSERT INTO jobs (study_uid, revision, state, created, updated, attempts)"
                " VALUES ('1.2', 1, 'done', 0, 0, 1)"
            )
    engine.dispose()
    engine = db.open_db(path)
    assert active(engine) == {"1.2": 1, "1.3": 0}
    assert [j.revision for j in jobs(engine)] == [1, 2]  # the duplicate renumbered, nothing deleted
    with engine.connect() as conn:  # 0003: both done jobs tallied
        assert conn.exec_driver_sql("SELECT value FROM tallies WHERE name = 'jobs:done'").scalar() == 2
    with engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"ix_studies_active", "ux_jobs_study_revision"} <= names
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == db.schema_head()
    with engine.begin() as conn:  # a database a newer dicomnode migrated: refused, not guessed at
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    engine.dispose()
    with pytest.raises(RuntimeError, match="newer than this dicomnode"):
        db.open_db(path)
    with pytest.raises(RuntimeError, match="newer than this dicomnode"):
        db.open_db_readonly(path)


def test_restart_resumes_running_jobs(env, tmp_path: Path):
    cfg, engine, store, runner = env
    t0 = time.time() - 1000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), generate_uid()), t0)
    job_id, _ = runner.worker.claim()
    with engine.begin() as conn:  # the process died in the middle of the job
        db.set_job_state(conn, job_id, JobState.RUNNING, "crash here")
    fresh = Stages.of(cfg, engine, store, FakeAnalyzer())
    assert fresh.worker.resume() == 1
    assert jobs(engine)[0].state == "queued"
    drain(fresh)
    assert jobs(engine)[0].state == "done"


def test_a_job_that_keeps_killing_the_process_fails_instead_of_looping(env, tmp_path: Path):
    from dicomnode.worker import MAX_RUN_ATTEMPTS

    cfg, engine, store, runner = env
    t0 = time.time() - 1000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), generate_uid()), t0)
    job_id = jobs(engine)[0].id
    with engine.begin() as conn:
        db.set_job_state(conn, job_id, JobState.RUNNING, "crash here", attempts=MAX_RUN_ATTEMPTS)
    Stages.of(cfg, engine, store, FakeAnalyzer()).worker.resume()
    job = jobs(engine)[0]
    assert job.state == "failed" and job.reason_code == "crashed_repeatedly"


def test_reprocess_makes_a_new_revision(env, tmp_path: Path):
    cfg, engine, store, runner = env
    study = generate_uid()
    t0 = time.time() - 1000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), study), t0)
    drain(runner)
    ok, msg = reprocess_study(cfg, study)
    assert ok and "revision 2" in msg
    drain(runner)
    assert [j.state for j in jobs(engine)] == ["superseded", "done"]
    assert reprocess_study(cfg, "1.2.3.4")[0] is False


def test_retention_removes_old_finished_studies_never_unfinished(env, tmp_path: Path):
    from storage import retention

    cfg, engine, store, runner = env
    t0 = time.time() - 100 * 86400
    old, fresh = generate_uid(), generate_uid()
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), old), t0)
    drain(runner)
    with engine.begin() as conn:  # it finished long ago
        conn.execute(db.jobs.update().values(finished=t0 + 200))
    ingest(engine, store, write_series(tmp_path / "b", SeriesSpec("T2 SAG", slices=3), fresh), time.time())
    runner.tick()  # the fresh study has a waiting job: untouchable
    done = retention.apply(engine, store, max_age_s=30 * 86400, min_free=0)
    assert done == {"purged_by_age": 1, "purged_for_space": 0}
    assert not (store.studies / old).exists() and (store.studies / fresh).exists()
    done = retention.apply(engine, store, max_age_s=0, min_free=10**18)  # disk pressure: still not the waiting one
    assert done["purged_for_space"] == 0 and (store.studies / fresh).exists()


def test_secondary_capture_is_written_only_when_configured(env, tmp_path: Path):
    cfg, engine, store, runner = env
    cfg.output.secondary_capture = True
    t0 = time.time() - 1000
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), generate_uid()), t0)
    drain(runner)
    job = jobs(engine)[0]
    out = store.root / "results" / str(job.id)
    assert job.state == "done" and (out / "sc.dcm").exists()
    assert pydicom.dcmread(out / "sc.dcm").SeriesNumber == 9903


def test_history_expires_results_then_jobs_of_purged_studies_and_old_associations(env, tmp_path: Path):
    """results/<job> of a job finished long ago goes after results_retention; its job row, events and send records
    only once the study's files are purged too (else the study would be analysed again); old association records go;
    a recent job keeps everything."""
    from storage import retention

    cfg, engine, store, runner = env
    t0 = time.time() - 400 * 86400
    old, fresh = generate_uid(), generate_uid()
    queue_study(runner, write_series(tmp_path / "a", SeriesSpec("T2 SAG", slices=3), old), t0)
    drain(runner)
    queue_study(runner, write_series(tmp_path / "b", SeriesSpec("T2 SAG", slices=3), fresh), time.time() - 200)
    drain(runner)
    old_job, fresh_job = (j.id for j in jobs(engine))
    with engine.begin() as conn:
        conn.execute(db.jobs.update().where(db.jobs.c.id == old_job).values(finished=t0 + 200))
        conn.execute(db.associations.insert().values(started=t0, ended=t0 + 1, calling_ae="OLD"))
        conn.execute(db.associations.insert().values(started=time.time() - 5, ended=time.time(), calling_ae="NEW"))
    assert (store.results / str(old_job)).is_dir() and (store.results / str(fresh_job)).is_dir()
    done = retention.expire_history(engine, store, 30 * 86400, 365 * 86400)
    assert done == {"results_removed": 1, "jobs_expired": 0, "associations_expired": 1}
    assert not (store.results / str(old_job)).exists() and (store.results / str(fresh_job)).is_dir()
    assert [j.id for j in jobs(engine)] == [old_job, fresh_job]  # the old study's files are still there
    retention.apply(engine, store, max_age_s=30 * 86400, min_free=0)  # now they go
    done = retention.expire_history(engine, store, 30 * 86400, 365 * 86400)
    assert done["jobs_expired"] == 1 and [j.id for j in jobs(engine)] == [fresh_job]
    assert events(engine, old_job) == [] and events(engine, fresh_job)
    with engine.connect() as conn:
        assert [r.calling_ae for r in conn.execute(select(db.associations))] == ["NEW"]
        assert not conn.execute(select(db.sent_objects).where(db.sent_objects.c.job_id == old_job)).all()
    runner.tick()  # the expired study is not picked up again
    assert [j.id for j in jobs(engine)] == [fresh_job]
    keep = retention.expire_history(engine, store, 0, 0, now=time.time() + 10 * 365 * 86400)
    assert keep == {"results_removed": 0, "jobs_expired": 0, "associations_expired": 0}


def test_a_database_url_that_lost_its_slashes_is_refused_not_opened_as_a_file(tmp_path: Path):
    with pytest.raises(ValueError, match="lost its '//'"):
        db.open_db(Path("postgresql+psycopg://u@127.0.0.1:5/db"))
    assert not list(tmp_path.iterdir())
