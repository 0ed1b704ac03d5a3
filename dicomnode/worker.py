"""A worker takes the next job and runs it through the stages: select and analyse (`dicomnode.analyse`), report
(`dicomnode.report.outputs`), send (`dicomnode.send`), each step recorded through `storage.db`.

A job interrupted by a crash is re-queued at start and runs once to completion; output UIDs derive from (study,
revision), so a re-sent object replaces itself at the PACS instead of appearing twice."""

from __future__ import annotations

import json
import threading
import time
import traceback
from typing import Any, Callable

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Engine

from ai.infer import Analyzer
from dicomnode import logs, metrics
from dicomnode.analyse import AnalysisError, NoInput, analyse
from dicomnode.config import Config
from dicomnode.report.outputs import write_outputs
from dicomnode.send import destinations, queue_outputs, send_job
from storage import db
from storage.filestore import FileStore
from storage.states import JobState

log = logs.get("dicomnode.worker")

MAX_RUN_ATTEMPTS = 5


class Worker:
    """Shared by the node's worker threads: `claim` hands each job to one of them."""

    def __init__(self, cfg: Config, engine: Engine, store: FileStore, analyzer: Callable[[], Analyzer]) -> None:
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self.analyzer = analyzer
        self._claim_lock = threading.Lock()
        self._active: set[int] = set()
        self._tls: Any = None
        if any(d.tls for d in cfg.destinations):
            from dicomnode.tls import client_context

            self._tls = client_context(cfg.tls)

    def resume(self) -> int:
        """Jobs a crash left running go back to the queue; sending jobs resend at once."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(db.jobs.c.id, db.jobs.c.state, db.jobs.c.attempts).where(
                db.jobs.c.state.in_([JobState.RUNNING.value, JobState.SENDING.value]))).all()
            for job_id, state, attempts in rows:
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

    def claim(self) -> tuple[int, str] | None:
        """The next queued job, or a sending job whose retry is due; None when idle."""
        now = time.time()
        due = and_(db.jobs.c.state == JobState.SENDING.value,
                   or_(db.jobs.c.not_before.is_(None), db.jobs.c.not_before <= now))
        q = select(db.jobs.c.id, db.jobs.c.state).where(or_(db.jobs.c.state == JobState.QUEUED.value, due))
        with self._claim_lock, self.engine.connect() as conn:
            if self._active:
                q = q.where(db.jobs.c.id.not_in(self._active))
            row = conn.execute(q.order_by(db.jobs.c.id).limit(1)).first()
            if row is None:
                return None
            self._active.add(row.id)
            return row.id, row.state

    def work(self, job_id: int, state: str) -> None:
        try:
            if state == JobState.QUEUED.value:
                self.run(job_id)
            else:
                send_job(self.cfg, self.engine, job_id, self._tls)
        finally:
            with self._claim_lock:
                self._active.discard(job_id)

    def run(self, job_id: int) -> None:
        t0 = time.time()
        with self.engine.begin() as conn:
            job = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).one()
            st = conn.execute(select(db.studies).where(db.studies.c.study_uid == job.study_uid)).one()
            files = db.instance_paths(conn, self.store.root, job.study_uid)
            db.set_job_state(conn, job_id, JobState.RUNNING, f"{len(files)} instances", started=t0,
                             attempts=job.attempts + 1, input_instances=st.instances)
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
            log.error("job crashed", job_id=job_id, error=type(exc).__name__, trace=_frames(exc))
            self._finish(job_id, JobState.FAILED, "internal_error", f"{type(exc).__name__}: {exc}"[:500])
            return
        metrics.STAGE_SECONDS.labels(stage="analyse").observe(time.time() - t0)
        t1 = time.time()
        out_dir = self.store.results / str(job_id)
        try:
            written = write_outputs(analysis, out_dir, job.revision, self.cfg.output)
        except Exception as exc:  # noqa: BLE001
            log.error("report failed", job_id=job_id, error=type(exc).__name__, trace=_frames(exc))
            self._finish(job_id, JobState.FAILED, "report_error", f"{type(exc).__name__}: {exc}"[:500])
            return
        metrics.STAGE_SECONDS.labels(stage="report").observe(time.time() - t1)
        dests, why = destinations(self.cfg, self.engine, job.study_uid)
        with self.engine.begin() as conn:
            fields = dict(selection=analysis.decision().to_json(), model_version=analysis.model_version,
                          series_uid=str(analysis.source.SeriesInstanceUID),
                          sop_instance_uid=str(analysis.source.SOPInstanceUID),
                          result=json.dumps([lv.to_dict() for lv in analysis.levels]))
            conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(**fields))
            db.add_job_event(conn, job_id, JobState.RUNNING, {"selection": analysis.selection.reason,
                                                              "slice": fields["sop_instance_uid"],
                                                              "outputs": [o.path.name for o in written]})
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


def _frames(exc: BaseException) -> str:
    """Where it failed, without the exception's message: messages can quote dataset values (names)."""
    return "".join(traceback.format_tb(exc.__traceback__, limit=5))
