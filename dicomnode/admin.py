"""The admin commands: `status` and `jobs` read (a read-only connection: an admin's look never writes), `retry`
and `reprocess` change a job through `storage.db` (the running service picks the change up). They work while the
service is stopped, and they never load torch (tests/test_layout.py)."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.uid import KeyObjectSelectionDocumentStorage
from sqlalchemy import desc, func, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from dicomnode import heartbeat, review
from dicomnode.config import Config
from storage import db, tallies
from storage.states import FINAL_STATES, JobState


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = time.time() - t
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


@contextlib.contextmanager
def _reading(cfg: Config, engine: Engine | None) -> Iterator[Engine | None]:
    """The caller's engine (the web page: the node's own), else the database opened read-only for this one look and
    closed after it; None where there is no database yet."""
    if engine is not None:
        yield engine
        return
    target = cfg.database_target
    if not db.is_url(target) and not Path(target).exists():
        yield None
        return
    opened = db.open_db_readonly(target)
    try:
        yield opened
    finally:
        opened.dispose()


def list_jobs(
    cfg: Config, state: str | None = None, limit: int = 50, engine: Engine | None = None
) -> list[dict[str, Any]]:
    q = select(db.jobs).order_by(desc(db.jobs.c.id)).limit(limit)
    if state:
        q = q.where(db.jobs.c.state == state)
    with _reading(cfg, engine) as reader:
        if reader is None:
            return []
        with reader.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
    out = []
    for r in rows:
        dur = (r["finished"] - r["started"]) if r["finished"] and r["started"] else None
        out.append(
            {
                "id": r["id"],
                "study_uid": r["study_uid"],
                "revision": r["revision"],
                "state": r["state"],
                "reason_code": r["reason_code"],
                "reason": r["reason"],
                "created": r["created"],
                "updated": r["updated"],
                "duration_s": round(dur, 3) if dur is not None else None,
                "series_uid": r["series_uid"],
                "sop_instance_uid": r["sop_instance_uid"],
                "model_version": r["model_version"],
                "selection": json.loads(r["selection"]) if r["selection"] else None,
            }
        )
    return out


def collect(cfg: Config, engine: Engine | None = None) -> dict[str, Any]:
    data = cfg.data_path
    service = heartbeat.read(data)
    disk_root = data if data.exists() else data.parent
    facts: dict[str, Any] = {
        "service": {
            "up": service.get("up", False),
            "pid": service.get("pid") if service.get("up") else None,
            "since": service.get("started") if service.get("up") else None,
            "model_version": service.get("model"),
        },
        "ae_title": cfg.node.ae_title,
        "port": cfg.node.port if cfg.tls.plain else None,
        "tls_port": cfg.tls.port or None,
        "data_dir": str(data),
        "disk_free_bytes": shutil.disk_usage(disk_root).free,
        "min_free_bytes": cfg.node.min_free_bytes,
        "instances": 0,
        "studies": 0,
        "jobs": {s.value: 0 for s in JobState},
        "nodes": [],
        "recent_jobs": [],
        "failures": [],
        "last_hour": {"instances": 0, "receive_rate_per_min": 0.0, "jobs_done": 0, "job_latency_s_mean": None},
        "agreement": None,  # with the reviewers, per finding over 30 and 90 days (dicomnode.review.agreement)
    }
    with _reading(cfg, engine) as reader:
        if reader is None:
            return facts
        hour = time.time() - 3600
        with reader.connect() as conn:
            facts.update(tallies.totals(conn))
            n = conn.execute(select(func.count()).where(db.instances.c.received_at >= hour)).scalar_one()
            finished = conn.execute(  # by the finish time's index alone (with the state, a planner takes the
                # state's index and reads every done job ever)
                select(db.jobs.c.state, db.jobs.c.started, db.jobs.c.finished).where(db.jobs.c.finished >= hour)
            ).all()
            done = [(r.started, r.finished) for r in finished if r.state == JobState.DONE.value]
            assoc = conn.execute(select(func.count()).where(db.associations.c.started >= hour)).scalar_one()
            facts["nodes"] = db.list_nodes(conn, since=time.time() - 86400)
            if inspect(conn).has_table("reviews"):  # a database not yet migrated by this version has none
                facts["agreement"] = review.agreement(conn, floor=cfg.review.agreement_floor)
        jobs = list_jobs(cfg, limit=10, engine=reader)
        failed = list_jobs(cfg, state=JobState.FAILED.value, limit=10, engine=reader)
    lat = [f - s for s, f in done if s and f]
    facts["last_hour"] = {
        "instances": n,
        "receive_rate_per_min": round(n / 60, 2),
        "associations": assoc,
        "jobs_done": len(done),
        "job_latency_s_mean": round(sum(lat) / len(lat), 2) if lat else None,
    }
    facts["recent_jobs"] = [{k: j[k] for k in ("id", "study_uid", "state", "duration_s", "updated")} for j in jobs]
    facts["failures"] = [{k: j[k] for k in ("id", "study_uid", "state", "reason_code", "reason")} for j in failed]
    return facts


def render(f: dict[str, Any]) -> str:
    svc = f["service"]
    up = f"UP since {_ago(svc['since'])} (pid {svc['pid']})" if svc["up"] else "DOWN"
    lines = [
        f"dicomnode  {up}",
        f"  AE {f['ae_title']}  port {f['port'] or '-'}  TLS port {f['tls_port'] or '-'}"
        f"  model {svc.get('model_version') or '-'}",
        f"  data {f['data_dir']}  disk free {f['disk_free_bytes'] / 1e9:.1f} GB"
        + ("  LOW: refusing stores" if f["disk_free_bytes"] < f["min_free_bytes"] else ""),
        f"  stored {f['instances']} instances in {f['studies']} studies",
        f"  last hour: {f['last_hour']['instances']} instances, {f['last_hour']['jobs_done']} jobs done,"
        f" mean latency {f['last_hour']['job_latency_s_mean'] or '-'} s",
        "  queue: " + "  ".join(f"{k} {v}" for k, v in f["jobs"].items() if v)
        if any(f["jobs"].values())
        else "  queue: empty",
    ]
    if f["nodes"]:
        lines.append("  processes:")
        for n in f["nodes"]:
            state = "up" if n["up"] else ("stopped" if n["stopped"] else "GONE")
            lines.append(
                f"    {n['host']}:{n['pid']:<7} {n['role']:8s} {state:7s} v{n['version']}"
                f"  heartbeat {_ago(n['heartbeat'])}  jobs running {n['jobs_running']}"
            )
    agreement = (f.get("agreement") or {}).get("30d")
    if agreement and agreement["discs"]:
        shares = [
            f"{name} {agreement[name]['agreement']:.0%} of {agreement[name]['n']}"
            for name in review.FINDINGS
            if agreement[name]["agreement"] is not None
        ]
        low = f["agreement"]["below_floor"]
        lines.append(
            f"  agreement with reviewers (30 days, {agreement['reviews']} reviews): {', '.join(shares)}"
            + (f"  BELOW FLOOR: {', '.join(low)}" if low else "")
        )
    if f["recent_jobs"]:
        lines.append("  recent jobs:")
        for j in f["recent_jobs"]:
            d = f"{j['duration_s']:.1f}s" if j["duration_s"] is not None else "-"
            lines.append(f"    #{j['id']:<5} {j['state']:10s} {d:>7s}  {j['study_uid']}")
    if f["failures"]:
        lines.append("  failures:")
        for j in f["failures"]:
            lines.append(f"    #{j['id']:<5} {j['reason_code'] or '-'}: {j['reason'] or ''}  {j['study_uid']}")
    return "\n".join(lines)


def render_jobs(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no jobs"
    out = [f"{'id':>5}  {'state':10s} {'rev':>3}  {'duration':>8}  study / reason"]
    for j in rows:
        d = f"{j['duration_s']:.1f}s" if j["duration_s"] is not None else "-"
        why = f"  [{j['reason_code']}: {j['reason']}]" if j["reason_code"] else ""
        out.append(f"{j['id']:>5}  {j['state']:10s} {j['revision']:>3}  {d:>8}  {j['study_uid']}{why}")
    return "\n".join(out)


def retry_job(cfg: Config, job_id: int) -> tuple[bool, str]:
    engine = db.open_db(cfg.database_target)
    with engine.begin() as conn:
        row = conn.execute(select(db.jobs.c.state).where(db.jobs.c.id == job_id)).first()
        if row is None:
            return False, f"no job {job_id}"
        if row.state not in (JobState.FAILED.value, JobState.NO_INPUT.value):
            return False, f"job {job_id} is {row.state}; only failed or no_input jobs can be retried"
        note = (
            db.sent_objects.c.job_id == job_id,
            db.sent_objects.c.sop_class_uid == KeyObjectSelectionDocumentStorage,
        )
        if conn.execute(select(db.sent_objects.c.id).where(*note)).first() is not None:
            # a rejection note that was not delivered: send it again (a re-run would bring the rejected result back)
            conn.execute(
                update(db.sent_objects)
                .where(*note, db.sent_objects.c.status != "sent")
                .values(status="pending", attempts=0, last_error=None)
            )
            db.set_job_state(
                conn,
                job_id,
                JobState.SENDING,
                "rejection note retried by admin",
                reason_code=None,
                reason=None,
                finished=None,
                not_before=None,
            )
            return True, f"job {job_id}: rejection note queued again"
        conn.execute(update(db.sent_objects).where(db.sent_objects.c.job_id == job_id).values(status="superseded"))
        db.set_job_state(
            conn,
            job_id,
            JobState.QUEUED,
            "retried by admin",
            reason_code=None,
            reason=None,
            finished=None,
            not_before=None,
        )
    return True, f"job {job_id} queued again"


def reprocess_study(cfg: Config, study_uid: str) -> tuple[bool, str]:
    engine = db.open_db(cfg.database_target)
    with engine.begin() as conn:
        rev = conn.execute(select(func.max(db.jobs.c.revision)).where(db.jobs.c.study_uid == study_uid)).scalar()
        known = conn.execute(select(db.studies.c.study_uid).where(db.studies.c.study_uid == study_uid)).first()
        if known is None:
            return False, f"no study {study_uid}"
        active = conn.execute(
            select(db.jobs.c.id).where(
                db.jobs.c.study_uid == study_uid, db.jobs.c.state.not_in([s.value for s in FINAL_STATES])
            )
        ).first()
        if active is not None:
            return False, f"study already has an unfinished job ({active.id})"
        try:
            job_id = db.new_job(conn, study_uid, (rev or 0) + 1, "reprocess requested by admin")
        except IntegrityError:  # the completion rule made this revision a moment ago
            return False, "a new revision of this study was just started; see dicomnode jobs"
    return True, f"job {job_id} queued (revision {(rev or 0) + 1})"
