"""Retention: received files go after a configured age once their study's job is finished; under disk pressure
the oldest finished studies go first. A study with an unfinished job is never touched. The node's own records
expire too (`expire_history`): a finished job's results folder, then, once its study's files are gone, the job with
its events and send records, and old association records."""

from __future__ import annotations

import shutil
import time
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from storage import db, tallies
from storage.filestore import FileStore
from storage.states import FINAL_STATES


def purgeable(engine: Engine) -> list[tuple[str, float]]:
    """(study_uid, finished) for studies whose every job is final, oldest first."""
    final = [s.value for s in FINAL_STATES]
    with engine.connect() as conn:
        unfinished = select(db.jobs.c.study_uid).where(db.jobs.c.state.not_in(final))
        rows = conn.execute(
            select(db.jobs.c.study_uid, func.max(db.jobs.c.finished))
            .where(db.jobs.c.study_uid.not_in(unfinished))
            .join(db.studies, db.studies.c.study_uid == db.jobs.c.study_uid)
            .where(db.studies.c.purged_at.is_(None))
            .group_by(db.jobs.c.study_uid)
            .order_by(func.max(db.jobs.c.finished))
        ).all()
    return [(uid, finished or 0.0) for uid, finished in rows]


def purge_study(engine: Engine, store: FileStore, study_uid: str) -> None:
    with engine.begin() as conn:
        tallies.purge(conn, study_uid)
        conn.execute(delete(db.instances).where(db.instances.c.study_uid == study_uid))
        conn.execute(update(db.studies).where(db.studies.c.study_uid == study_uid).values(purged_at=time.time()))
    store.remove_study(study_uid)


def apply(
    engine: Engine, store: FileStore, max_age_s: float, min_free: int, now: float | None = None
) -> dict[str, Any]:
    """Purge by age, then by disk pressure (free space below min_free); returns what it did."""
    now = now or time.time()
    by_age = by_space = 0
    candidates = purgeable(engine)
    for uid, finished in list(candidates):
        if max_age_s > 0 and now - finished > max_age_s:
            purge_study(engine, store, uid)
            candidates.remove((uid, finished))
            by_age += 1
    for uid, _ in candidates:
        if store.free_bytes(max_age=0) >= min_free:
            break
        purge_study(engine, store, uid)
        by_space += 1
    return {"purged_by_age": by_age, "purged_for_space": by_space}


def expire_history(
    engine: Engine, store: FileStore, results_max_age_s: float, history_max_age_s: float, now: float | None = None
) -> dict[str, Any]:
    """results/<job> of final jobs finished more than results_max_age_s ago (the PACS holds what they sent); jobs,
    their events and send records finished more than history_max_age_s ago, only where the study's files are purged
    (a job row is what keeps the completion rule from analysing a study again); association records ended more than
    history_max_age_s ago. 0 keeps everything of that kind."""
    now = now or time.time()
    final = [s.value for s in FINAL_STATES]
    out = {"results_removed": 0, "jobs_expired": 0, "associations_expired": 0}
    if results_max_age_s > 0 and store.results.is_dir():
        with engine.connect() as conn:
            old = {
                str(r.id)
                for r in conn.execute(
                    select(db.jobs.c.id).where(db.jobs.c.state.in_(final), db.jobs.c.finished < now - results_max_age_s)
                )
            }
        for folder in store.results.iterdir():
            if folder.name in old:
                shutil.rmtree(folder, ignore_errors=True)
                out["results_removed"] += 1
    if history_max_age_s > 0:
        cutoff = now - history_max_age_s
        with engine.begin() as conn:
            purged = select(db.studies.c.study_uid).where(db.studies.c.purged_at.is_not(None))
            ids = [
                r.id
                for r in conn.execute(
                    select(db.jobs.c.id).where(
                        db.jobs.c.state.in_(final), db.jobs.c.finished < cutoff, db.jobs.c.study_uid.in_(purged)
                    )
                )
            ]
            if ids:
                conn.execute(delete(db.job_events).where(db.job_events.c.job_id.in_(ids)))
                conn.execute(delete(db.sent_objects).where(db.sent_objects.c.job_id.in_(ids)))
                conn.execute(delete(db.jobs).where(db.jobs.c.id.in_(ids)))
            out["jobs_expired"] = len(ids)
            out["associations_expired"] = conn.execute(
                delete(db.associations).where(db.associations.c.ended.is_not(None), db.associations.c.ended < cutoff)
            ).rowcount
    return out
