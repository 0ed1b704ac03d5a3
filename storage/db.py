"""SQLite through SQLAlchemy Core: the instance index, associations, jobs and their events.

Core rather than ORM on the receive path: one INSERT per instance, no object bookkeeping. WAL mode with
synchronous=NORMAL: a commit survives a killed process; the files themselves are fsynced, and
`FileStore.reconcile` re-indexes any file whose row a power cut took away."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text, create_engine, event, func, insert,
    select, text, update,
)
from sqlalchemy.engine import Engine

from storage.states import JobState

SCHEMA_VERSION = 1
metadata = MetaData()

instances = Table(
    "instances", metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("transfer_syntax", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("association_id", Integer),
    Index("ix_instances_study", "study_uid"),
)

studies = Table(
    "studies", metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("first_received", Float, nullable=False),
    Column("last_received", Float, nullable=False),
    Column("instances", Integer, nullable=False, default=0),
    Column("calling_ae", String(16)),
    Column("purged_at", Float),
)

associations = Table(
    "associations", metadata,
    Column("id", Integer, primary_key=True),
    Column("calling_ae", String(16)),
    Column("called_ae", String(16)),
    Column("address", String(64)),
    Column("port", Integer),
    Column("started", Float, nullable=False),
    Column("ended", Float),
    Column("instances", Integer, default=0),
    Column("bytes", Integer, default=0),
    Column("outcome", String(32)),
    Column("detail", Text),
)

jobs = Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("study_uid", String(64), nullable=False),
    Column("revision", Integer, nullable=False, default=1),
    Column("state", String(16), nullable=False),
    Column("reason_code", String(32)),
    Column("reason", Text),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("started", Float),
    Column("finished", Float),
    Column("attempts", Integer, nullable=False, default=0),
    Column("series_uid", String(64)),
    Column("sop_instance_uid", String(64)),
    Column("selection", Text),  # JSON: the series/slice decision and why
    Column("result", Text),  # JSON: levels
    Column("model_version", String(64)),
    Column("input_instances", Integer),  # the study's instance count when the job took its input
    Column("not_before", Float),  # a send retry waits until then
    Index("ix_jobs_state", "state"),
    Index("ix_jobs_study", "study_uid"),
)

job_events = Table(
    "job_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("detail", Text),
    Index("ix_job_events_job", "job_id"),
)

sent_objects = Table(
    "sent_objects", metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("path", Text, nullable=False),
    Column("destination", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # pending / sent / failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("updated", Float, nullable=False),
)


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_db(path: Path) -> Engine:
    """Open (create, migrate) the database at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30},
                           pool_size=20, max_overflow=20)
    event.listen(engine, "connect", _pragmas)
    migrate(engine)
    return engine


def open_db_readonly(path: Path) -> Engine:
    """The database for an admin's read (`status`, `jobs`): opened read-only, never created, migrated or switched
    to WAL, so looking never writes (a read-only file or mount works); a schema newer than this dicomnode is refused
    as open_db refuses it."""
    def connect(flags: str) -> sqlite3.Connection:
        conn = sqlite3.connect(f"file:{path}?{flags}", uri=True, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA user_version")  # a WAL file that cannot be opened read-only fails here, not later
        return conn

    try:
        connect("mode=ro").close()
        flags = "mode=ro"
    except sqlite3.OperationalError:
        # A WAL database whose -shm cannot be created (a read-only folder or mount): nothing can write there
        # either, so SQLite may read it as immutable.
        flags = "mode=ro&immutable=1"
    engine = create_engine("sqlite://", creator=lambda: connect(flags))
    with engine.connect() as conn:
        version = conn.execute(text("PRAGMA user_version")).scalar_one()
    if version > SCHEMA_VERSION:
        engine.dispose()
        raise RuntimeError(f"database schema {version} is newer than this dicomnode ({SCHEMA_VERSION})")
    return engine


def connect_raw(engine: Engine) -> sqlite3.Connection:
    """A plain sqlite3 connection to the engine's database, same pragmas, for the receive hot path."""
    conn = sqlite3.connect(engine.url.database, check_same_thread=False, timeout=30)
    _pragmas(conn, None)
    return conn


def migrate(engine: Engine) -> None:
    """Create missing tables and step user_version forward; each future schema change adds a step here."""
    with engine.begin() as conn:
        version = conn.execute(text("PRAGMA user_version")).scalar_one()
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"database schema {version} is newer than this dicomnode ({SCHEMA_VERSION})")
        metadata.create_all(conn)
        conn.execute(text(f"PRAGMA user_version={SCHEMA_VERSION}"))


_INSTANCE_COLS = ("sop_instance_uid", "sop_class_uid", "study_uid", "series_uid", "transfer_syntax", "path", "size",
                  "received_at", "association_id")
_UPSERT_INSTANCE = (
    f"INSERT INTO instances ({', '.join(_INSTANCE_COLS)}) VALUES ({', '.join('?' * len(_INSTANCE_COLS))}) "
    "ON CONFLICT(sop_instance_uid) DO UPDATE SET path=excluded.path, size=excluded.size, "
    "received_at=excluded.received_at, association_id=excluded.association_id, "
    "transfer_syntax=excluded.transfer_syntax"
)
_UPSERT_STUDY = (
    "INSERT INTO studies (study_uid, first_received, last_received, instances, calling_ae) VALUES (?, ?, ?, 1, ?) "
    "ON CONFLICT(study_uid) DO UPDATE SET last_received=excluded.last_received, instances=instances+1, "
    "purged_at=NULL, calling_ae=coalesce(excluded.calling_ae, calling_ae)"
)


def record_instance(dbapi_conn: Any, row: dict[str, Any]) -> None:
    """Index one stored instance and commit; a re-sent SOP Instance UID replaces its row (one stored copy).

    Takes a DB-API (sqlite3) connection: on the receive path SQLAlchemy's statement handling cost ~1 ms an
    instance, forty times the INSERTs themselves."""
    with dbapi_conn:  # one transaction, committed on exit
        dbapi_conn.execute(_UPSERT_INSTANCE, tuple(row[c] for c in _INSTANCE_COLS))
        dbapi_conn.execute(_UPSERT_STUDY, (row["study_uid"], row["received_at"], row["received_at"],
                                           row.get("calling_ae")))


def add_job_event(conn: Any, job_id: int, state: JobState | str, detail: Any = None) -> None:
    conn.execute(insert(job_events).values(
        job_id=job_id, at=time.time(), state=str(state),
        detail=detail if isinstance(detail, str) or detail is None else json.dumps(detail)))


def set_job_state(conn: Any, job_id: int, state: JobState, detail: Any = None, **fields: Any) -> None:
    """The one way a job changes state: the row and an event, in the caller's transaction."""
    now = time.time()
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(state=str(state), updated=now, **fields))
    add_job_event(conn, job_id, state, detail)


def counts(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        n_inst = conn.execute(select(func.count()).select_from(instances)).scalar_one()
        n_study = conn.execute(select(func.count(func.distinct(instances.c.study_uid)))).scalar_one()
        by_state = dict(conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all())
    return {"instances": n_inst, "studies": n_study, "jobs": {s.value: by_state.get(s.value, 0) for s in JobState}}


def instance_paths(conn: Any, root: Path, study_uid: str) -> list[Path]:
    """A study's stored files, as indexed."""
    rows = conn.execute(select(instances.c.path).where(instances.c.study_uid == study_uid)).all()
    return [root / p for (p,) in rows]


def new_job(conn: Any, study_uid: str, revision: int, why: str, state: JobState = JobState.QUEUED) -> int:
    """A job for a study's revision, with its first event, in the caller's transaction."""
    now = time.time()
    job_id = int(conn.execute(insert(jobs).values(study_uid=study_uid, revision=revision, state=state.value,
                                                  created=now, updated=now)).inserted_primary_key[0])
    add_job_event(conn, job_id, state, why)
    return job_id


def finish_job(conn: Any, job_id: int, state: JobState, code: str | None, reason: str) -> None:
    """A job ends (failed, no input, done): state, reason and finish time in one change."""
    fields: dict[str, Any] = {"finished": time.time()}
    if code is not None:
        fields.update(reason_code=code, reason=reason[:500])
    set_job_state(conn, job_id, state, reason[:1000], **fields)


def supersede_older(conn: Any, job_id: int) -> None:
    """A study's newer revision is done: its older done jobs are superseded."""
    job = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
    older = conn.execute(select(jobs.c.id).where(jobs.c.study_uid == job.study_uid, jobs.c.id != job_id,
                                                 jobs.c.state == JobState.DONE.value)).all()
    for (old,) in older:
        set_job_state(conn, old, JobState.SUPERSEDED, f"superseded by job {job_id} (revision {job.revision})")
