"""The audit trail: sign-ins (accepted and refused), reviews, rejections, exports and re-tunes — who, when, which job.
Ids and counts only: a review's contents live in its own tables, and nothing here names a patient."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import desc, insert, select

from storage import db

# The actions recorded (a stable contract of `dicomnode audit`)
ACTIONS = ("sign_in", "review", "reject", "export", "retune")


def record(
    conn: Any,
    action: str,
    username: str | None,
    outcome: str = "ok",
    job_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """One row in the caller's transaction. username: a configured user's name, None for a name that is nobody's
    (what was typed is not kept: it may be a password typed into the wrong field)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    conn.execute(
        insert(db.audit).values(
            at=time.time(),
            username=username,
            action=action,
            job_id=job_id,
            outcome=outcome,
            detail=json.dumps(detail, sort_keys=True) if detail else None,
        )
    )


def recent(conn: Any, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
    """The newest rows first, each as `dicomnode audit --json` prints it."""
    query = select(db.audit).order_by(desc(db.audit.c.id)).limit(limit)
    if action:
        query = query.where(db.audit.c.action == action)
    out = []
    for r in conn.execute(query):
        row = dict(r._mapping)
        row["detail"] = json.loads(row["detail"]) if row["detail"] else None
        row["time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(row["at"]))
        out.append(row)
    return out
