"""Retention: received files go after a configured age once their study's job is finished; under disk pressure
the oldest finished studies go first. A study with an unfinished job is never touched."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from storage import db
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
            .group_by(db.jobs.c.study_uid).order_by(func.max(db.jobs.c.finished))).all()
    return [(uid, finished or 0.0) for uid, finished in rows]


def purge_study(engine: Engine, store: FileStore, study_uid: str) -> None:
    with engine.begin() as conn:
        conn.execute(delete(db.instances).where(db.instances.c.study_uid == study_uid))
        conn.execute(update(db.studies).where(db.studies.c.study_uid == study_uid).values(purged_at=time.time()))
    store.remove_study(study_uid)


def apply(engine: Engine, store: FileStore, max_age_s: float, min_free: int, now: float | None = None) -> dict[str, Any]:
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
