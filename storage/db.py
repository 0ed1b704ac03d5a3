"""SQLite through SQLAlchemy Core: the instance index, associations, jobs and their events.

Core rather than ORM on the receive path: one INSERT per instance, no object bookkeeping. WAL mode with
synchronous=NORMAL: a commit survives a killed process; the files themselves are fsynced, and
`FileStore.reconcile` re-indexes any file whose row a power cut took away."""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine

from storage.states import FINAL_STATES, JobState

metadata = MetaData()

instances = Table(
    "instances",
    metadata,
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
    Index("ix_instances_received", "received_at"),  # status: the last hour's instances, not all of them
)

studies = Table(
    "studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("first_received", Float, nullable=False),
    Column("last_received", Float, nullable=False),
    Column("instances", Integer, nullable=False, default=0),
    Column("calling_ae", String(16)),
    Column("purged_at", Float),
    # 1 while the completion rule has something to look at (set by every received instance, cleared by the rule once
    # the study's latest job is final and has seen all its instances): its cost follows the active studies
    Column("active", Integer, nullable=False, server_default="1"),
    Column("tallied", Integer),  # stored instances added to tallies["instances"] when the study was last settled
    Index("ix_studies_active", "active"),
)

associations = Table(
    "associations",
    metadata,
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
    Index("ix_associations_started", "started"),
)

jobs = Table(
    "jobs",
    metadata,
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
    Column("lease_owner", String(128)),  # the worker (host:pid) that holds the job
    Column("lease_until", Float),  # it renews the lease while it works; an expired one lets another take the job
    Index("ix_jobs_state", "state"),
    Index("ix_jobs_study", "study_uid"),
    Index("ux_jobs_study_revision", "study_uid", "revision", unique=True),  # one job per revision, not by luck
    Index("ix_jobs_lease_owner", "lease_owner"),
    Index("ix_jobs_finished", "finished"),
)

tallies = Table(  # totals that status shows without reading the history (storage.tallies)
    "tallies",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False, server_default="0"),
)

# A study's stored instances, inside a statement on `studies`: what a settled study adds to the tallies
STORED_INSTANCES = select(func.count()).where(instances.c.study_uid == studies.c.study_uid).scalar_subquery()

nodes = Table(  # every process of a deployment beats here: `dicomnode status` shows them
    "nodes",
    metadata,
    Column("id", String(160), primary_key=True),  # host:pid:token, also the owner of the jobs it leases
    Column("host", String(128), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("version", String(32), nullable=False),
    Column("started", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("stopped", Float),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("detail", Text),
    Index("ix_job_events_job", "job_id"),
)

sent_objects = Table(
    "sent_objects",
    metadata,
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

reviews = Table(  # a reviewer's verdict on a job's results: one per job and user, edited in place
    "reviews",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False),
    Column("reviewer", String(64), nullable=False),  # the signed-in user's name
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Column("chain_shift", Integer, nullable=False, server_default="0"),  # +1: numbered one level too high, -1: low
    Index("ux_reviews_job_reviewer", "job_id", "reviewer", unique=True),
    Index("ix_reviews_updated", "updated"),
)

review_levels = Table(  # per disc: what the node said when it was reviewed, and what the reviewer says
    "review_levels",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("review_id", Integer, ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
    Column("level", String(8), nullable=False),
    Column("node_call", String(16), nullable=False),  # normal / bulge / protrusion / extrusion
    Column("node_schmorl", Integer, nullable=False),
    Column("node_pfirrmann", Integer),
    Column("node_stenosis", Integer),
    Column("node_x", Float, nullable=False),
    Column("node_y", Float, nullable=False),
    Column("call", String(16), nullable=False),
    Column("schmorl", Integer, nullable=False),
    Column("pfirrmann", Integer),
    Column("stenosis", Integer),
    Column("x", Float, nullable=False),
    Column("y", Float, nullable=False),
    Index("ix_review_levels_review", "review_id"),
)

audit = Table(  # who did what, when, to which job: ids and counts only, never patient data
    "audit",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", Float, nullable=False),
    Column("username", String(64)),  # a configured user's name; None when the name typed is no user's
    Column("action", String(32), nullable=False),
    Column("job_id", Integer),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Index("ix_audit_at", "at"),
)


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def is_url(target: Path | str) -> bool:
    """A server database's URL; a Path made of one (its // collapsed) is refused rather than opened as a file."""
    text_ = str(target)
    if "://" in text_:
        return True
    if re.match(r"^[a-z][a-z0-9+]*:/", text_):
        raise ValueError(f"{text_!r} looks like a database URL that lost its '//' (passed through Path?)")
    return False


def open_db(target: Path | str) -> Engine:
    """Open (create, migrate) the database: a SQLite file path, or a URL (`postgresql+psycopg://user@host:port/db`,
    shared by every process of a deployment). A server database gets a small pool per process (10 + 10): several
    processes stay under PostgreSQL's default max_connections of 100."""
    if is_url(target):
        engine = create_engine(str(target), pool_size=10, max_overflow=10, pool_pre_ping=True)
    else:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20
        )
        event.listen(engine, "connect", _pragmas)
    migrate(engine)
    return engine


def open_db_readonly(target: Path | str) -> Engine:
    """The database for an admin's read (`status`, `jobs`): opened read-only, never created, migrated or switched
    to WAL, so looking never writes (a read-only file or mount works); a schema newer than this dicomnode is refused
    as open_db refuses it."""
    if is_url(target):  # a server database: read-only transactions, the schema checked as open_db checks it
        engine = create_engine(str(target), connect_args={"options": "-c default_transaction_read_only=on"})
        with engine.connect() as conn:
            _check_revision(schema_revision(conn))
        return engine
    path = Path(target)

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
    try:
        with engine.connect() as conn:
            _check_revision(schema_revision(conn))
    except RuntimeError:
        engine.dispose()
        raise
    return engine


def connect_raw(engine: Engine) -> Any:
    """A plain DB-API connection for the receive hot path: sqlite3 with the same pragmas, or a pooled psycopg
    connection of the engine (`close()` gives it back to the pool, `discard_raw` drops a broken one)."""
    if engine.dialect.name != "sqlite":
        return engine.raw_connection()
    conn = sqlite3.connect(str(engine.url.database), check_same_thread=False, timeout=30)
    _pragmas(conn, None)
    return conn


def discard_raw(conn: Any) -> None:
    """A connection that failed (the server went away): closed, never reused."""
    try:
        if hasattr(conn, "invalidate"):
            conn.invalidate()
        else:
            conn.close()
    except Exception:  # noqa: BLE001 - it is broken already
        pass


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic(conn: Any) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def schema_head() -> str:
    """The newest schema revision this dicomnode knows (storage/migrations/versions)."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory(str(MIGRATIONS)).get_current_head())


def schema_revision(conn: Any) -> str | None:
    """The database's revision: Alembic's, else the one its SQLite user_version stood for before Alembic (1: "0001")."""
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(conn).get_current_revision()
    if current is None and conn.dialect.name == "sqlite":
        return {1: "0001", 2: "0002"}.get(int(conn.execute(text("PRAGMA user_version")).scalar() or 0))
    return current


def _check_revision(revision: str | None) -> None:
    from alembic.script import ScriptDirectory
    from alembic.util.exc import CommandError

    if revision is None:
        return
    try:
        ScriptDirectory(str(MIGRATIONS)).get_revision(revision)
    except CommandError:
        raise RuntimeError(
            f"database schema {revision} is newer than this dicomnode (it knows {schema_head()})"
        ) from None


TALLY_NAMES = ["instances", "studies", *(f"jobs:{s.value}" for s in sorted(FINAL_STATES))]

_SQLITE_TRIGGERS = [
    "CREATE TRIGGER tally_jobs_insert AFTER INSERT ON jobs BEGIN "
    "UPDATE tallies SET value = value + 1 WHERE name = 'jobs:' || NEW.state; END",
    "CREATE TRIGGER tally_jobs_update AFTER UPDATE OF state ON jobs WHEN OLD.state <> NEW.state BEGIN "
    "UPDATE tallies SET value = value - 1 WHERE name = 'jobs:' || OLD.state; "
    "UPDATE tallies SET value = value + 1 WHERE name = 'jobs:' || NEW.state; END",
    "CREATE TRIGGER tally_jobs_delete AFTER DELETE ON jobs BEGIN "
    "UPDATE tallies SET value = value - 1 WHERE name = 'jobs:' || OLD.state; END",
]
_POSTGRES_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION dicomnode_tally_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN UPDATE tallies SET value = value - 1 WHERE name = 'jobs:' || OLD.state; END IF;
  IF TG_OP <> 'DELETE' THEN UPDATE tallies SET value = value + 1 WHERE name = 'jobs:' || NEW.state; END IF;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER tally_jobs AFTER INSERT OR DELETE OR UPDATE OF state ON jobs "
    "FOR EACH ROW EXECUTE FUNCTION dicomnode_tally_jobs()",
]


def install_tallies(conn: Any) -> None:
    """The triggers that keep the jobs' tallies, and every tally computed once from what the tables hold (a new
    database, or migration 0003). Rows exist only for TALLY_NAMES: an open state has none and is counted live."""
    for statement in _POSTGRES_TRIGGERS if conn.dialect.name == "postgresql" else _SQLITE_TRIGGERS:
        conn.execute(text(statement))
    settled = (studies.c.active == 0, studies.c.purged_at.is_(None))
    conn.execute(update(studies).where(*settled).values(tallied=STORED_INSTANCES))
    values = {
        "instances": conn.execute(select(func.coalesce(func.sum(studies.c.tallied), 0)).where(*settled)).scalar(),
        "studies": conn.execute(select(func.count()).where(*settled, studies.c.tallied > 0)).scalar(),
    }
    for state, n in conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)):
        values[f"jobs:{state}"] = n
    conn.execute(tallies.delete())
    conn.execute(insert(tallies), [{"name": name, "value": int(values.get(name) or 0)} for name in TALLY_NAMES])


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Processes that open one new SQLite file at once create its tables one after another (flock on a lock file)."""
    if engine.dialect.name != "sqlite":
        yield
        return
    with open(f"{engine.url.database}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Creates a new database at the newest schema, or brings an older one forward with the Alembic migrations
    (storage/migrations: the same steps on SQLite and PostgreSQL); a schema newer than this dicomnode is refused.
    The processes of a deployment that start at once migrate one after another (PostgreSQL: an advisory lock, and
    its DDL is transactional)."""
    from alembic import command

    with _sqlite_file_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7401)"))
        revision = schema_revision(conn)
        _check_revision(revision)
        cfg = _alembic(conn)
        if revision is None and not inspect(conn).has_table("jobs"):
            metadata.create_all(conn)  # a new database: the current tables at once, stamped as the newest schema
            install_tallies(conn)
            command.stamp(cfg, "head")
            return
        if not inspect(conn).has_table("alembic_version"):
            command.stamp(cfg, revision or "0001")  # a schema from before Alembic
        command.upgrade(cfg, "head")


_INSTANCE_COLS = (
    "sop_instance_uid",
    "sop_class_uid",
    "study_uid",
    "series_uid",
    "transfer_syntax",
    "path",
    "size",
    "received_at",
    "association_id",
)
_UPSERT_INSTANCE = (
    f"INSERT INTO instances ({', '.join(_INSTANCE_COLS)}) VALUES ({', '.join('?' * len(_INSTANCE_COLS))}) "
    "ON CONFLICT(sop_instance_uid) DO UPDATE SET path=excluded.path, size=excluded.size, "
    "received_at=excluded.received_at, association_id=excluded.association_id, "
    "transfer_syntax=excluded.transfer_syntax"
)
_UPSERT_STUDY = (
    "INSERT INTO studies (study_uid, first_received, last_received, instances, calling_ae) VALUES (?, ?, ?, 1, ?) "
    "ON CONFLICT(study_uid) DO UPDATE SET last_received=excluded.last_received, instances=studies.instances+1, "
    "purged_at=NULL, active=1, calling_ae=coalesce(excluded.calling_ae, studies.calling_ae)"
)


def record_instance(dbapi_conn: Any, row: dict[str, Any]) -> None:
    """Index one stored instance and commit; a re-sent SOP Instance UID replaces its row (one stored copy).

    Takes a DB-API connection (`connect_raw`): on the receive path SQLAlchemy's statement handling cost ~1 ms an
    instance, forty times the INSERTs themselves. The same upserts run on SQLite and PostgreSQL."""
    instance = tuple(row[c] for c in _INSTANCE_COLS)
    study = (row["study_uid"], row["received_at"], row["received_at"], row.get("calling_ae"))
    if isinstance(dbapi_conn, sqlite3.Connection):
        with dbapi_conn:  # one transaction, committed on exit
            dbapi_conn.execute(_UPSERT_INSTANCE, instance)
            dbapi_conn.execute(_UPSERT_STUDY, study)
        return
    cur = dbapi_conn.cursor()
    try:
        cur.execute(_UPSERT_INSTANCE.replace("?", "%s"), instance)
        cur.execute(_UPSERT_STUDY.replace("?", "%s"), study)
        dbapi_conn.commit()
    except BaseException:
        with contextlib.suppress(Exception):
            dbapi_conn.rollback()
        raise
    finally:
        cur.close()


def add_job_event(conn: Any, job_id: int, state: JobState | str, detail: Any = None) -> None:
    conn.execute(
        insert(job_events).values(
            job_id=job_id,
            at=time.time(),
            state=str(state),
            detail=detail if isinstance(detail, str) or detail is None else json.dumps(detail),
        )
    )


def set_job_state(
    conn: Any, job_id: int, state: JobState, detail: Any = None, only_from: JobState | None = None, **fields: Any
) -> bool:
    """The one way a job changes state: the row and an event, in the caller's transaction. only_from: change it only
    if it is still in that state (the completion rule runs in every worker process); False when it was not."""
    where = jobs.c.id == job_id if only_from is None else and_(jobs.c.id == job_id, jobs.c.state == only_from.value)
    changed = conn.execute(update(jobs).where(where).values(state=str(state), updated=time.time(), **fields)).rowcount
    if changed:
        add_job_event(conn, job_id, state, detail)
    return bool(changed)


def instance_paths(conn: Any, root: Path, study_uid: str) -> list[Path]:
    """A study's stored files, as indexed."""
    rows = conn.execute(select(instances.c.path).where(instances.c.study_uid == study_uid)).all()
    return [root / p for (p,) in rows]


def new_job(conn: Any, study_uid: str, revision: int, why: str, state: JobState = JobState.QUEUED) -> int:
    """A job for a study's revision, with its first event, in the caller's transaction."""
    now = time.time()
    job_id = int(
        conn.execute(
            insert(jobs).values(study_uid=study_uid, revision=revision, state=state.value, created=now, updated=now)
        ).inserted_primary_key[0]
    )
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
    older = conn.execute(
        select(jobs.c.id).where(
            jobs.c.study_uid == job.study_uid, jobs.c.id != job_id, jobs.c.state == JobState.DONE.value
        )
    ).all()
    for (old,) in older:
        set_job_state(conn, old, JobState.SUPERSEDED, f"superseded by job {job_id} (revision {job.revision})")


def open_job_counts(conn: Any) -> dict[str, int]:
    """Jobs in each unfinished state (the gauges): an indexed count that stays small however long the history."""
    open_states = [s.value for s in JobState if s not in FINAL_STATES]
    rows = conn.execute(select(jobs.c.state, func.count()).where(jobs.c.state.in_(open_states)).group_by(jobs.c.state))
    found = {str(state): int(n) for state, n in rows}
    return {s: found.get(s, 0) for s in open_states}


def claim_job(engine: Engine, owner: str, lease_seconds: float) -> tuple[int, str] | None:
    """Takes the next job with one atomic statement and leases it to `owner`: a queued job, a sending job whose retry
    is due, or a running or sending job whose lease expired (its worker died). Two workers never get the same job."""
    now = time.time()
    free = or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < now)
    due = or_(
        jobs.c.state == JobState.QUEUED.value,
        and_(jobs.c.state == JobState.SENDING.value, or_(jobs.c.not_before.is_(None), jobs.c.not_before <= now)),
        jobs.c.state == JobState.RUNNING.value,  # free: its worker died or gave it up (run() counts the attempts)
    )
    pick = select(jobs.c.id).where(due, free).order_by(jobs.c.id).limit(1)
    if engine.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (
        update(jobs)
        .where(jobs.c.id == pick.scalar_subquery(), free)
        .values(lease_owner=owner, lease_until=now + lease_seconds)
        .returning(jobs.c.id, jobs.c.state)
    )
    with engine.begin() as conn:
        row = conn.execute(stmt).first()
    return (int(row.id), str(row.state)) if row else None


def renew_leases(engine: Engine, owner: str, job_ids: list[int], lease_seconds: float) -> None:
    if job_ids:
        with engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(job_ids), jobs.c.lease_owner == owner)
                .values(lease_until=time.time() + lease_seconds)
            )


def release_lease(engine: Engine, owner: str, job_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )


NODE_STALE_AFTER = 30.0  # seconds without a heartbeat: the process is taken for gone


def beat(engine: Engine, node: dict[str, Any], stopped: bool = False) -> None:
    """A process's heartbeat row (node: id, host, pid, role, version, started)."""
    now = time.time()
    row = dict(node, heartbeat=now, stopped=now if stopped else None)
    with engine.begin() as conn:
        if conn.execute(update(nodes).where(nodes.c.id == row["id"]).values(**row)).rowcount == 0:
            conn.execute(insert(nodes).values(**row))


def list_nodes(conn: Any, since: float) -> list[dict[str, Any]]:
    """The processes that beat after `since`, each with the jobs it holds now and whether it is up."""
    now = time.time()
    held = dict(
        conn.execute(
            select(jobs.c.lease_owner, func.count())
            .where(jobs.c.lease_owner.is_not(None), jobs.c.lease_until > now)
            .group_by(jobs.c.lease_owner)
        ).all()
    )
    out = []
    for r in conn.execute(select(nodes).where(nodes.c.heartbeat >= since).order_by(nodes.c.started)):
        up = r.stopped is None and now - r.heartbeat < NODE_STALE_AFTER
        out.append(dict(r._mapping, up=up, jobs_running=int(held.get(r.id, 0))))
    return out
