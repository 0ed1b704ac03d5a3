"""Totals for `dicomnode status` that do not grow with the history: stored instances and studies, jobs per final
state. Counting them from the tables read every row ever kept (66 ms at 100k studies, and ten times that at 1M).

- Jobs in each final state: triggers on `jobs` keep `tallies` rows `jobs:<state>` (every writer, in the same
  statement, so a retry, a purge of old jobs or a racing worker cannot make them drift; `db.install_tallies`).
- Stored instances and studies: a study's count is added when the completion rule settles it (`settle`, the
  study's latest job final and nothing new) and taken away when retention purges it (`purge`); `studies.tallied`
  remembers how many were added. The studies still active are counted live — they are few, and indexed.
  The receive path is left alone: one more write per instance to one shared row would serialise every receiver."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, case, func, select, update

from storage import db
from storage.states import JobState


def _add(conn: Any, name: str, delta: int) -> None:
    if delta:
        conn.execute(update(db.tallies).where(db.tallies.c.name == name).values(value=db.tallies.c.value + delta))


def _settled_sums(conn: Any, uids: list[str]) -> tuple[int, int]:
    """What these studies have added to the tallies so far: instances, and studies counted."""
    counted = func.sum(case((db.studies.c.tallied > 0, 1), else_=0))
    row = conn.execute(
        select(func.coalesce(func.sum(db.studies.c.tallied), 0), func.coalesce(counted, 0)).where(
            db.studies.c.study_uid.in_(uids)
        )
    ).one()
    return int(row[0]), int(row[1])


def settle(conn: Any, studies: list[tuple[str, int]]) -> int:
    """The completion rule has nothing left to do for these studies (uid, and `seen`: the received count when it
    looked): each goes inactive with its stored instances tallied, unless an instance arrived since or another
    worker's rule settled it first. A few statements for the whole batch, whatever its size (after an upgrade the
    first tick settles the whole history). Returns how many it settled."""
    if not studies:
        return 0
    uids = [uid for uid, _ in studies]
    instances_before, studies_before = _settled_sums(conn, uids)
    changed = conn.execute(
        update(db.studies)
        .where(
            db.studies.c.study_uid == bindparam("b_uid"),
            db.studies.c.instances == bindparam("b_seen"),
            db.studies.c.active == 1,
        )
        .values(active=0, tallied=db.STORED_INSTANCES),
        [{"b_uid": uid, "b_seen": seen} for uid, seen in studies],
    ).rowcount
    instances_after, studies_after = _settled_sums(conn, uids)
    _add(conn, "instances", instances_after - instances_before)
    _add(conn, "studies", studies_after - studies_before)
    return int(changed)


def purge(conn: Any, study_uid: str) -> None:
    """Retention removed the study's files and rows: what was tallied for it goes too."""
    before = conn.execute(select(db.studies.c.tallied).where(db.studies.c.study_uid == study_uid)).scalar() or 0
    conn.execute(update(db.studies).where(db.studies.c.study_uid == study_uid).values(tallied=None))
    _add(conn, "instances", -before)
    _add(conn, "studies", -int(before > 0))


def totals(conn: Any) -> dict[str, Any]:
    """instances, studies and jobs per state: the tallies plus the active studies and the open jobs, counted live."""
    tally: dict[str, int] = {str(k): int(v) for k, v in conn.execute(select(db.tallies.c.name, db.tallies.c.value))}
    live = (db.studies.c.active == 1, db.studies.c.purged_at.is_(None))
    active_uids = select(db.studies.c.study_uid).where(*live)
    stored_live = conn.execute(select(func.count()).where(db.instances.c.study_uid.in_(active_uids))).scalar_one()
    counted_live = conn.execute(select(func.coalesce(func.sum(db.studies.c.tallied), 0)).where(*live)).scalar_one()
    new_studies = conn.execute(
        select(func.count()).where(*live, func.coalesce(db.studies.c.tallied, 0) == 0)
    ).scalar_one()
    open_jobs = db.open_job_counts(conn)
    jobs = {s.value: open_jobs.get(s.value, tally.get(f"jobs:{s.value}", 0)) for s in JobState}
    return {
        "instances": tally.get("instances", 0) + int(stored_live) - int(counted_live),
        "studies": tally.get("studies", 0) + int(new_studies),
        "jobs": jobs,
    }
