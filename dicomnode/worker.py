"""A worker takes the next job and runs it through the stages: select and analyse (`dicomnode.analyse`), report
(`dicomnode.report.outputs`), send (`dicomnode.send`), each step recorded through `storage.db`.

A job is claimed with one atomic statement and leased to its worker, which renews the lease while it works
(`storage.db.claim_job`): workers in several processes or machines never run one job twice, and the job of a worker
that died is taken over once its lease expires. Output UIDs derive from (study, revision), so a re-sent object
replaces itself at the PACS instead of appearing twice."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from ai.infer import Analyzer
from dicomnode import logs, metrics
from dicomnode.analyse import AnalysisError, NoInput, analyse
from dicomnode.config import Config
from dicomnode.report.outputs import write_outputs
from dicomnode.send import destinations, queue_outputs, record_send_error, send_job
from storage import db
from storage.filestore import FileStore
from storage.states import JobState

log = logs.get("dicomnode.worker")

MAX_RUN_ATTEMPTS = 5


class Worker:
    """Shared by the node's worker threads: `claim` hands each job to one of them."""

    def __init__(
        self, cfg: Config, engine: Engine, store: FileStore, analyzer: Callable[[], Analyzer], owner: str | None = None
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self.analyzer = analyzer
        self.owner = owner or process_id()
        self.lease_seconds = cfg.scheduler.lease_seconds
        self._lock = threading.Lock()
        self._active: set[int] = set()
        self._tls: Any = None
        if any(d.tls for d in cfg.destinations):
            from dicomnode.tls import client_context

            self._tls = client_context(cfg.tls)

    def resume(self) -> int:
        """At start: jobs that a dead process of this machine held (or that nobody holds while running) go back to
        the queue, and sends it held resume at once, without waiting for their leases to expire. Jobs of live
        workers, here or on other machines, are theirs; sends waiting out a back-off keep it."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(db.jobs.c.id, db.jobs.c.state, db.jobs.c.attempts, db.jobs.c.lease_owner).where(
                    db.jobs.c.state.in_([JobState.RUNNING.value, JobState.SENDING.value])
                )
            ).all()
            rows = [
                r
                for r in rows
                if (r.lease_owner is None and r.state == JobState.RUNNING.value)
                or (r.lease_owner is not None and self._gone(r.lease_owner))
            ]
            for job_id, state, attempts, owner in rows:
                held = db.jobs.c.lease_owner.is_(None) if owner is None else db.jobs.c.lease_owner == owner
                taken = update(db.jobs).where(db.jobs.c.id == job_id, held).values(lease_owner=None, lease_until=None)
                if not conn.execute(taken).rowcount:  # claimed by a live worker meanwhile: its job now
                    continue
                if state == JobState.RUNNING.value and attempts >= MAX_RUN_ATTEMPTS:
                    # a study that takes the process down with it must not do so forever
                    why = f"interrupted {attempts} times while running (the process died each time)"
                    db.finish_job(conn, job_id, JobState.FAILED, "crashed_repeatedly", why)
                elif state == JobState.RUNNING.value:
                    db.set_job_state(conn, job_id, JobState.QUEUED, "resumed after restart")
                else:
                    conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(not_before=None))
                    db.add_job_event(conn, job_id, JobState.SENDING, "send resumed after restart")
        return len(rows)

    def _gone(self, owner: str) -> bool:
        """An owner on this machine whose process is gone (or an earlier worker of this very process)."""
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return False
        if int(pid) == os.getpid():
            return owner != self.owner
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def claim(self) -> tuple[int, str] | None:
        """The next job (queued, a due retry, or one whose worker's lease expired), leased to us; None when idle."""
        claimed = db.claim_job(self.engine, self.owner, self.lease_seconds)
        if claimed is not None:
            with self._lock:
                self._active.add(claimed[0])
        return claimed

    def renew(self) -> None:
        """Called by the scheduler every lease_seconds / 3 while jobs run."""
        with self._lock:
            held = sorted(self._active)
        db.renew_leases(self.engine, self.owner, held, self.lease_seconds)

    def work(self, job_id: int, state: str) -> None:
        try:
            if state == JobState.SENDING.value:
                send_job(self.cfg, self.engine, job_id, self._tls)
            else:  # queued, or running under a worker that died
                self.run(job_id)
        except Exception as exc:  # noqa: BLE001 - the database or the store failed under the job
            logs.failure(log, "job step failed", exc, job_id=job_id, state=state)
            if state == JobState.SENDING.value:
                with contextlib.suppress(Exception):  # counted as a failed try: retried with back-off, then failed
                    record_send_error(self.cfg, self.engine, job_id, f"{type(exc).__name__}: {exc}"[:300])
            # a run that raised stays running without a lease: claimed again, and run() counts its attempts
        finally:
            with self._lock:
                self._active.discard(job_id)
            db.release_lease(self.engine, self.owner, job_id)

    def run(self, job_id: int) -> None:
        t0 = time.time()
        with self.engine.begin() as conn:
            job = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).one()
            if job.lease_owner != self.owner or job.state not in (JobState.QUEUED.value, JobState.RUNNING.value):
                log.warning("job no longer ours", job_id=job_id, state=job.state)  # its lease expired, another took it
                return
            if job.state == JobState.RUNNING.value and job.attempts >= MAX_RUN_ATTEMPTS:
                # taken over from a worker that died: a study that takes workers down must not do so forever
                why = f"interrupted {job.attempts} times while running (its worker died each time)"
                db.finish_job(conn, job_id, JobState.FAILED, "crashed_repeatedly", why)
                return
            st = conn.execute(select(db.studies).where(db.studies.c.study_uid == job.study_uid)).one()
            files = db.instance_paths(conn, self.store.root, job.study_uid)
            db.set_job_state(
                conn,
                job_id,
                JobState.RUNNING,
                f"{len(files)} instances",
                started=t0,
                attempts=job.attempts + 1,
                input_instances=st.instances,
            )
        log.info("job running", job_id=job_id, study_uid=job.study_uid, instances=len(files))
        try:
            analyzer = self.analyzer()
        except Exception as exc:  # noqa: BLE001 - missing or broken weights
            self._finish(job_id, JobState.FAILED, "model_unavailable", f"{type(exc).__name__}: {exc}"[:500])
            return
        try:
            analysis = analyse(files, analyzer, self.cfg.ai.candidate_slices)
        except NoInput as exc:
            self._finish(job_id, JobState.NO_INPUT, "no_input", str(exc))
            return
        except AnalysisError as exc:
            self._finish(job_id, JobState.FAILED, exc.code, exc.reason)
            return
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop the worker
            logs.failure(log, "job crashed", exc, job_id=job_id)
            self._finish(job_id, JobState.FAILED, "internal_error", f"{type(exc).__name__}: {exc}"[:500])
            return
        metrics.STAGE_SECONDS.labels(stage="analyse").observe(time.time() - t0)
        t1 = time.time()
        out_dir = self.store.results / str(job_id)
        try:
            written = write_outputs(analysis, out_dir, job.revision, self.cfg.output)
        except Exception as exc:  # noqa: BLE001
            logs.failure(log, "report failed", exc, job_id=job_id)
            self._finish(job_id, JobState.FAILED, "report_error", f"{type(exc).__name__}: {exc}"[:500])
            return
        metrics.STAGE_SECONDS.labels(stage="report").observe(time.time() - t1)
        dests, why = destinations(self.cfg, self.engine, job.study_uid)
        with self.engine.begin() as conn:
            fields = dict(
                selection=analysis.decision().to_json(),
                model_version=analysis.model_version,
                series_uid=str(analysis.source.SeriesInstanceUID),
                sop_instance_uid=str(analysis.source.SOPInstanceUID),
                result=json.dumps([lv.to_dict() for lv in analysis.levels]),
            )
            conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(**fields))
            db.add_job_event(
                conn,
                job_id,
                JobState.RUNNING,
                {
                    "selection": analysis.selection.reason,
                    "slice": fields["sop_instance_uid"],
                    "outputs": [o.path.name for o in written],
                    "repairs": analysis.repairs,  # one line each: what the node read around a gap in the headers
                },
            )
            if not dests:
                db.set_job_state(conn, job_id, JobState.DONE, f"{why}; results kept in {out_dir}", finished=time.time())
                db.supersede_older(conn, job_id)
                return
            queue_outputs(conn, job_id, dests, written)
            db.set_job_state(conn, job_id, JobState.SENDING, f"to {', '.join(d.name for d in dests)}", not_before=None)
        send_job(self.cfg, self.engine, job_id, self._tls)

    def _finish(self, job_id: int, state: JobState, code: str, reason: str) -> None:
        with self.engine.begin() as conn:
            db.finish_job(conn, job_id, state, code, reason)
        log.warning("job ended", job_id=job_id, state=state.value, reason_code=code)


def process_id() -> str:
    """host:pid:token, unique per process start: the owner of the jobs a process leases, its row in `nodes`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
