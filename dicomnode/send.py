"""Stage 6, send: a job's results to its destinations, each object recorded, retried with back-off while the
failure is transient (peer down, out of resources) and failed at once when it is permanent (refused, unknown SOP
class). The clients: `dicomnode.scu` (DIMSE C-STORE) and `dicomnode.stow` (DICOMweb STOW-RS)."""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import Any

from pydicom.uid import KeyObjectSelectionDocumentStorage
from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Engine

from dicomnode import logs, metrics, scu, stow
from dicomnode.config import Config, Destination
from dicomnode.report.outputs import Output
from storage import db
from storage.states import JobState

log = logs.get("dicomnode.send")


def destinations(cfg: Config, engine: Engine, study_uid: str) -> tuple[list[Destination], str]:
    """Where a study's results go: the one destination, or with several the one whose AE title sent the study;
    with none, why not."""
    dests = cfg.destinations
    if not dests:
        return [], "no destination configured"
    if len(dests) == 1:
        return list(dests), ""
    with engine.connect() as conn:
        caller = conn.execute(select(db.studies.c.calling_ae).where(db.studies.c.study_uid == study_uid)).scalar()
    match = [d for d in dests if d.ae_title == caller]
    return match, "" if match else f"no destination matches the sender {caller!r}"


def queue_outputs(conn: Any, job_id: int, dests: list[Destination], written: list[Output]) -> None:
    """One pending row per DICOM object and destination, in the caller's transaction (the job's run)."""
    queue_rows(conn, job_id, [d.name for d in dests], written)


def queue_rows(conn: Any, job_id: int, names: list[str], written: list[Output]) -> None:
    """queue_outputs by destination name (a rejection note goes where the results went, by the names recorded)."""
    for name in names:
        for out in written:
            if out.is_dicom:
                conn.execute(
                    insert(db.sent_objects).values(
                        job_id=job_id,
                        sop_instance_uid=out.sop_instance_uid,
                        sop_class_uid=out.sop_class_uid,
                        path=str(out.path),
                        destination=name,
                        status="pending",
                        attempts=0,
                        updated=time.time(),
                    )
                )


def record_send_error(cfg: Config, engine: Engine, job_id: int, detail: str) -> None:
    """A send that raised (a results file gone, the database away) counts as a failed try of every pending object:
    retried with the back-off, failed after send_retries, never a loop at the poll interval."""
    with engine.begin() as conn:
        conn.execute(
            update(db.sent_objects)
            .where(db.sent_objects.c.job_id == job_id, db.sent_objects.c.status == "pending")
            .values(attempts=db.sent_objects.c.attempts + 1, last_error=detail, updated=time.time())
        )
        _after_failed_try(cfg, conn, job_id, detail)


def _after_failed_try(cfg: Config, conn: Any, job_id: int, detail: str) -> None:
    tries = (
        conn.execute(  # the objects still being tried (a rejection note counts its own tries, not the results')
            select(func.max(db.sent_objects.c.attempts)).where(
                db.sent_objects.c.job_id == job_id, db.sent_objects.c.status == "pending"
            )
        ).scalar()
        or 0
    )
    if tries > cfg.output.send_retries:
        db.set_job_state(
            conn,
            job_id,
            JobState.FAILED,
            detail,
            reason_code="send_unreachable",
            reason=f"{detail} (after {tries} tries)"[:500],
            finished=time.time(),
        )
        return
    delay = cfg.output.retry_backoff_seconds * 2 ** max(tries - 1, 0)
    conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(not_before=time.time() + delay))
    db.add_job_event(conn, job_id, JobState.SENDING, f"try {tries} failed ({detail}); retry in {delay:.0f}s")


def _is_rejection(conn: Any, job_id: int) -> bool:
    """Whether the job's sends include a rejection note (`dicomnode.reject`): delivered, the job ends `rejected`."""
    kos = and_(db.sent_objects.c.job_id == job_id, db.sent_objects.c.sop_class_uid == KeyObjectSelectionDocumentStorage)
    return conn.execute(select(db.sent_objects.c.id).where(kos)).first() is not None


def send_job(cfg: Config, engine: Engine, job_id: int, tls: ssl.SSLContext | None = None) -> None:
    """Sends what is still pending and moves the job on: done, failed, or a retry after a back-off."""
    t0 = time.time()
    by_name = {d.name: d for d in cfg.destinations}
    with engine.connect() as conn:
        pending = conn.execute(
            select(db.sent_objects).where(db.sent_objects.c.job_id == job_id, db.sent_objects.c.status == "pending")
        ).all()
    permanent: list[str] = []
    transient: list[str] = []
    groups: dict[str, list[Any]] = {}
    for row in pending:
        groups.setdefault(row.destination, []).append(row)
    for name, rows in groups.items():
        dest = by_name.get(name)
        if dest is None:
            permanent.append(f"destination {name!r} no longer configured")
            continue
        paths = [Path(r.path) for r in rows]
        if dest.protocol == "dicomweb":
            results = stow.store(paths, dest.url, dest.username, dest.password, dest.token)
        else:
            results = scu.store(
                paths, dest.ae_title, dest.host, dest.port, calling_ae=cfg.node.ae_title, tls=tls if dest.tls else None
            )
        by_uid = {r.sop_instance_uid: r for r in rows}
        with engine.begin() as conn:
            for res in results:
                row = by_uid[res.sop_instance_uid]
                status = "sent" if res.ok else ("failed" if res.kind == scu.PERMANENT else "pending")
                conn.execute(
                    update(db.sent_objects)
                    .where(db.sent_objects.c.id == row.id)
                    .values(
                        status=status,
                        attempts=row.attempts + 1,
                        last_error=None if res.ok else res.detail,
                        updated=time.time(),
                    )
                )
                if not res.ok:
                    metrics.SEND_FAILURES.labels(kind=res.kind).inc()
                    (permanent if res.kind == scu.PERMANENT else transient).append(f"{name}: {res.detail}")
    metrics.STAGE_SECONDS.labels(stage="send").observe(time.time() - t0)
    with engine.begin() as conn:
        if permanent:
            db.set_job_state(
                conn,
                job_id,
                JobState.FAILED,
                "; ".join(permanent)[:1000],
                reason_code="send_refused",
                reason=permanent[0][:500],
                finished=time.time(),
            )
            log.warning("job failed", job_id=job_id, reason_code="send_refused")
            return
        if transient:
            _after_failed_try(cfg, conn, job_id, transient[0])
            return
        if _is_rejection(conn, job_id):  # the results were retracted: the note is at every destination that had them
            db.set_job_state(
                conn, job_id, JobState.REJECTED, "rejection note stored at the destination", finished=time.time()
            )
            log.info("job rejected", job_id=job_id)
            return
        db.set_job_state(conn, job_id, JobState.DONE, "all results stored at the destination", finished=time.time())
        db.supersede_older(conn, job_id)
    log.info("job done", job_id=job_id)
