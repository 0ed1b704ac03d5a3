"""Retracting a wrong result (IHE Imaging Object Change Management): a Key Object Selection document titled
"Rejected for Quality Reasons" that references the job's SR, GSPS (and SC) goes to every destination that received
them, through the send stage with its retries; once delivered the job is `rejected` (`dicomnode.send`)."""

from __future__ import annotations

import time
from typing import Any

from pydicom import dcmread
from sqlalchemy import select

from dicomnode import logs
from dicomnode.report.common import OutputIds
from dicomnode.report.kos import build_rejection
from dicomnode.report.outputs import Output
from dicomnode.send import queue_rows
from storage import audit, db
from storage.filestore import FileStore
from storage.states import JobState

log = logs.get("dicomnode.reject")


class RejectError(ValueError):
    """A job whose results cannot be rejected (not done, nothing written): said in one line."""


def reject_job(engine: Any, store: FileStore, job_id: int, reviewer: str) -> str:
    """Writes the rejection note and queues it for the destinations that hold the results (the job goes `sending`,
    and a worker delivers it); with none, the job is `rejected` at once. Returns the job's new state."""
    with engine.connect() as conn:
        job = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).first()
        if job is None:
            raise RejectError(f"no job {job_id}")
        if job.state != JobState.DONE.value:
            raise RejectError(f"job {job_id} is {job.state}: only a done job's results can be rejected")
        sent = conn.execute(
            select(db.sent_objects.c.destination, db.sent_objects.c.path).where(
                db.sent_objects.c.job_id == job_id, db.sent_objects.c.status == "sent"
            )
        ).all()
    folder = store.results / str(job_id)
    written = sorted(p for p in folder.glob("*.dcm") if p.stem in ("sr", "gsps", "sc"))
    if not written:
        raise RejectError(f"job {job_id} kept no results to reject")
    objects = [dcmread(p) for p in written]
    kos = build_rejection(objects[0], objects, OutputIds(job.study_uid, job.revision), job.model_version or "")
    path = folder / "kos.dcm"
    kos.save_as(path, enforce_file_format=True)
    note = Output(path, "kos", str(kos.SOPClassUID), str(kos.SOPInstanceUID))
    dests = sorted({r.destination for r in sent})
    with engine.begin() as conn:
        audit.record(conn, "reject", reviewer, job_id=job_id, detail={"destinations": len(dests)})
        if not dests:
            done = db.set_job_state(
                conn,
                job_id,
                JobState.REJECTED,
                f"rejected by {reviewer}; no destination had received the results (note kept in {path.name})",
                only_from=JobState.DONE,
                finished=time.time(),
            )
            state = JobState.REJECTED
        else:
            queue_rows(conn, job_id, dests, [note])
            done = db.set_job_state(
                conn,
                job_id,
                JobState.SENDING,
                f"rejected by {reviewer}: rejection note to {', '.join(dests)}",
                only_from=JobState.DONE,
                not_before=None,
            )
            state = JobState.SENDING
        if not done:
            raise RejectError(f"job {job_id} changed state meanwhile")
    log.info("job rejected", job_id=job_id, destinations=len(dests))
    return state.value
