"""Job lifecycle: from a study's instances to results stored at the destination, each step an event row.

States live in storage.states; every change goes through db.set_job_state. A job interrupted by a crash is
re-queued at start and runs once to completion; output UIDs derive from (study, revision), so a re-sent
object replaces itself at the PACS instead of appearing twice."""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Engine

from ai.infer import Analyzer
from dicomnode import logs, metrics, scu
from dicomnode.config import Config, Destination
from dicomnode.pipeline import AnalysisError, NoInput, analyse, write_outputs
from dicomnode.selection import select as select_series
from storage import db
from storage.filestore import FileStore
from storage.states import FINAL_STATES, JobState

log = logs.get("dicomnode.jobs")

MAX_RUN_ATTEMPTS = 5


class JobRunner:
    def __init__(self, cfg: Config, engine: Engine, store: FileStore, analyzer: Callable[[], Analyzer]) -> None:
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self.analyzer = analyzer
        self.results_dir = store.results
        self._claim_lock = threading.Lock()
        self._active: set[int] = set()
        self._early_cache: dict[tuple[str, int], bool] = {}
        self._tls: Any = None
        if any(d.tls for d in cfg.destinations):
            from dicomnode.tls import client_context

            self._tls = client_context(cfg.tls)

    # --- start-up ---------------------------------------------------------------------------------
    def resume(self) -> int:
        """Jobs a crash left running go back to the queue; sending jobs resend at once."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(db.jobs.c.id, db.jobs.c.state, db.jobs.c.attempts).where(
                db.jobs.c.state.in_([JobState.RUNNING.value, JobState.SENDING.value]))).all()
            for job_id, state, attempts in rows:
                if state == JobState.RUNNING.value and attempts >= MAX_RUN_ATTEMPTS:
                    # a study that takes the process down with it must not do so forever
                    why = f"interrupted {attempts} times while running (the process died each time)"
                    db.set_job_state(conn, job_id, JobState.FAILED, why, reason_code="crashed_repeatedly",
                                     reason=why, finished=time.time())
                elif state == JobState.RUNNING.value:
                    db.set_job_state(conn, job_id, JobState.QUEUED, "resumed after restart")
                else:
                    conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(not_before=None))
                    db.add_job_event(conn, job_id, JobState.SENDING, "send resumed after restart")
        return len(rows)

    # --- completion rule (driven by the scheduler's tick) -------------------------------------------
    def study_files(self, conn: Any, study_uid: str) -> list[Path]:
        rows = conn.execute(select(db.instances.c.path).where(db.instances.c.study_uid == study_uid)).all()
        return [self.store.root / p for (p,) in rows]

    def tick(self, now: float | None = None) -> None:
        now = now or time.time()
        sc = self.cfg.scheduler
        with self.engine.connect() as conn:
            latest = conn.execute(select(db.jobs.c.study_uid, func.max(db.jobs.c.id)).group_by(db.jobs.c.study_uid)).all()
            latest_ids = [i for _, i in latest]
            jobs = {r.study_uid: r for r in conn.execute(select(db.jobs).where(db.jobs.c.id.in_(latest_ids)))}
            studies = conn.execute(select(db.studies).where(db.studies.c.purged_at.is_(None))).all()
        for st in studies:
            job = jobs.get(st.study_uid)
            quiet = now - st.last_received
            if job is None:
                with self.engine.begin() as conn:
                    job_id = conn.execute(insert(db.jobs).values(
                        study_uid=st.study_uid, revision=1, state=JobState.WAITING.value, created=now,
                        updated=now)).inserted_primary_key[0]
                    db.add_job_event(conn, job_id, JobState.WAITING, f"study arrived ({st.instances} instances)")
                continue
            if job.state == JobState.WAITING.value:
                why = None
                if quiet >= sc.study_quiet_seconds:
                    why = f"study quiet for {quiet:.0f}s"
                elif now - st.first_received >= sc.max_wait_seconds:
                    why = f"maximum wait of {sc.max_wait_seconds:.0f}s reached"
                elif quiet >= sc.series_quiet_seconds and self._series_complete(st.study_uid, st.instances):
                    why = f"sagittal T2 series complete (quiet {quiet:.0f}s)"
                if why:
                    with self.engine.begin() as conn:
                        db.set_job_state(conn, job.id, JobState.QUEUED, why)
            elif (job.state in FINAL_STATES and job.input_instances is not None
                  and st.instances != job.input_instances and quiet >= sc.study_quiet_seconds):
                self._maybe_new_revision(job, st)
        self._update_gauges()

    def _series_complete(self, study_uid: str, instances: int) -> bool:
        key = (study_uid, instances)
        if key not in self._early_cache:
            with self.engine.connect() as conn:
                files = self.study_files(conn, study_uid)
            self._early_cache[key] = select_series(files).complete
            if len(self._early_cache) > 1000:
                self._early_cache.clear()
        return self._early_cache[key]

    def _maybe_new_revision(self, job: Any, st: Any) -> None:
        """New instances after a finished job: a new revision only when they change the selected series."""
        with self.engine.connect() as conn:
            files = self.study_files(conn, st.study_uid)
        sel = select_series(files)
        before = json.loads(job.selection) if job.selection else {}
        changed = (sel.series.series_uid if sel.series else None) != before.get("series_uid") or \
            len(sel.ordered) != before.get("slices")
        with self.engine.begin() as conn:
            if not changed:
                conn.execute(update(db.jobs).where(db.jobs.c.id == job.id).values(input_instances=st.instances))
                db.add_job_event(conn, job.id, job.state,
                                 f"{st.instances - (job.input_instances or 0)} new instance(s) did not change the selected series")
                return
            new_id = new_job(conn, st.study_uid, job.revision + 1,
                                   f"new instances changed the selected series (revision {job.revision + 1})")
            db.add_job_event(conn, job.id, job.state, f"revision {job.revision + 1} (job {new_id}) started")
        log.info("new job revision", study_uid=st.study_uid, job_id=new_id, revision=job.revision + 1)

    def _update_gauges(self) -> None:
        for state, n in db.counts(self.engine)["jobs"].items():
            metrics.JOBS.labels(state=state).set(n)

    # --- workers ----------------------------------------------------------------------------------
    def claim(self) -> tuple[int, str] | None:
        """The next queued job, or a sending job whose retry is due; None when idle."""
        now = time.time()
        with self._claim_lock, self.engine.connect() as conn:
            row = conn.execute(select(db.jobs.c.id, db.jobs.c.state).where(or_(
                db.jobs.c.state == JobState.QUEUED.value,
                and_(db.jobs.c.state == JobState.SENDING.value,
                     or_(db.jobs.c.not_before.is_(None), db.jobs.c.not_before <= now))),
                db.jobs.c.id.not_in(self._active) if self._active else True).order_by(db.jobs.c.id).limit(1)).first()
            if row is None:
                return None
            self._active.add(row.id)
            return row.id, row.state

    def work(self, job_id: int, state: str) -> None:
        try:
            if state == JobState.QUEUED.value:
                self.run(job_id)
            else:
                self.send(job_id)
        finally:
            with self._claim_lock:
                self._active.discard(job_id)

    def run(self, job_id: int) -> None:
        t0 = time.time()
        with self.engine.begin() as conn:
            job = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).one()
            st = conn.execute(select(db.studies).where(db.studies.c.study_uid == job.study_uid)).one()
            files = self.study_files(conn, job.study_uid)
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
        out_dir = self.results_dir / str(job_id)
        try:
            written = write_outputs(analysis, out_dir, job.revision, self.cfg.output)
        except Exception as exc:  # noqa: BLE001
            log.error("report failed", job_id=job_id, error=type(exc).__name__, trace=_frames(exc))
            self._finish(job_id, JobState.FAILED, "report_error", f"{type(exc).__name__}: {exc}"[:500])
            return
        metrics.STAGE_SECONDS.labels(stage="report").observe(time.time() - t1)
        dests, why = self.destinations(job.study_uid)
        with self.engine.begin() as conn:
            fields = dict(selection=json.dumps(analysis.decision()), model_version=analysis.model_version,
                          series_uid=str(analysis.source.SeriesInstanceUID),
                          sop_instance_uid=str(analysis.source.SOPInstanceUID),
                          result=json.dumps([lv.to_dict() for lv in analysis.levels]))
            conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(**fields))
            db.add_job_event(conn, job_id, JobState.RUNNING, {"selection": analysis.selection.reason,
                                                              "slice": fields["sop_instance_uid"],
                                                              "outputs": [p.name for p in written]})
            if not dests:
                db.set_job_state(conn, job_id, JobState.DONE, f"{why}; results kept in {out_dir}", finished=time.time())
                self._supersede_older(conn, job_id)
                return
            for d in dests:
                for p in written:
                    if p.suffix != ".dcm":
                        continue
                    ds_uid, cls_uid = _uids(p)
                    conn.execute(insert(db.sent_objects).values(
                        job_id=job_id, sop_instance_uid=ds_uid, sop_class_uid=cls_uid, path=str(p), destination=d.name,
                        status="pending", attempts=0, updated=time.time()))
            db.set_job_state(conn, job_id, JobState.SENDING, f"to {', '.join(d.name for d in dests)}", not_before=None)
        self.send(job_id)

    def destinations(self, study_uid: str) -> tuple[list[Destination], str]:
        dests = self.cfg.destinations
        if not dests:
            return [], "no destination configured"
        if len(dests) == 1:
            return list(dests), ""
        with self.engine.connect() as conn:
            caller = conn.execute(select(db.studies.c.calling_ae).where(db.studies.c.study_uid == study_uid)).scalar()
        match = [d for d in dests if d.ae_title == caller]
        return match, "" if match else f"no destination matches the sender {caller!r}"

    def send(self, job_id: int) -> None:
        t0 = time.time()
        by_name = {d.name: d for d in self.cfg.destinations}
        with self.engine.connect() as conn:
            pending = conn.execute(select(db.sent_objects).where(
                db.sent_objects.c.job_id == job_id, db.sent_objects.c.status == "pending")).all()
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
            results = scu.store([Path(r.path) for r in rows], dest.ae_title, dest.host, dest.port,
                                calling_ae=self.cfg.node.ae_title, tls=self._tls if dest.tls else None)
            by_uid = {r.sop_instance_uid: r for r in rows}
            with self.engine.begin() as conn:
                for res in results:
                    row = by_uid[res.sop_instance_uid]
                    status = "sent" if res.ok else ("failed" if res.kind == scu.PERMANENT else "pending")
                    conn.execute(update(db.sent_objects).where(db.sent_objects.c.id == row.id).values(
                        status=status, attempts=row.attempts + 1, last_error=None if res.ok else res.detail,
                        updated=time.time()))
                    if not res.ok:
                        metrics.SEND_FAILURES.labels(kind=res.kind).inc()
                        (permanent if res.kind == scu.PERMANENT else transient).append(f"{name}: {res.detail}")
        metrics.STAGE_SECONDS.labels(stage="send").observe(time.time() - t0)
        with self.engine.begin() as conn:
            if permanent:
                db.set_job_state(conn, job_id, JobState.FAILED, "; ".join(permanent)[:1000], reason_code="send_refused",
                                 reason=permanent[0][:500], finished=time.time())
                log.warning("job failed", job_id=job_id, reason_code="send_refused")
                return
            if transient:
                tries = conn.execute(select(func.max(db.sent_objects.c.attempts)).where(
                    db.sent_objects.c.job_id == job_id)).scalar() or 0
                if tries > self.cfg.output.send_retries:
                    db.set_job_state(conn, job_id, JobState.FAILED, transient[0], reason_code="send_unreachable",
                                     reason=f"{transient[0]} (after {tries} tries)"[:500], finished=time.time())
                    return
                delay = self.cfg.output.retry_backoff_seconds * 2 ** (tries - 1)
                conn.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(not_before=time.time() + delay))
                db.add_job_event(conn, job_id, JobState.SENDING, f"try {tries} failed ({transient[0]}); retry in {delay:.0f}s")
                return
            db.set_job_state(conn, job_id, JobState.DONE, "all results stored at the destination", finished=time.time())
            self._supersede_older(conn, job_id)
        log.info("job done", job_id=job_id)

    def _supersede_older(self, conn: Any, job_id: int) -> None:
        job = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).one()
        older = conn.execute(select(db.jobs.c.id).where(db.jobs.c.study_uid == job.study_uid, db.jobs.c.id != job_id,
                                                        db.jobs.c.state == JobState.DONE.value)).all()
        for (old,) in older:
            db.set_job_state(conn, old, JobState.SUPERSEDED, f"superseded by job {job_id} (revision {job.revision})")

    def _finish(self, job_id: int, state: JobState, code: str, reason: str) -> None:
        with self.engine.begin() as conn:
            db.set_job_state(conn, job_id, state, reason, reason_code=code, reason=reason, finished=time.time())
        log.warning("job ended", job_id=job_id, state=state.value, reason_code=code)


def _frames(exc: BaseException) -> str:
    """Where it failed, without the exception's message: messages can quote dataset values (names)."""
    return "".join(traceback.format_tb(exc.__traceback__, limit=5))


def new_job(conn: Any, study_uid: str, revision: int, why: str) -> int:
    """A queued job for a study's new revision."""
    now = time.time()
    job_id = conn.execute(insert(db.jobs).values(study_uid=study_uid, revision=revision, state=JobState.QUEUED.value,
                                                 created=now, updated=now)).inserted_primary_key[0]
    db.add_job_event(conn, job_id, JobState.QUEUED, why)
    return job_id


def _uids(path: Path) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "SOPClassUID"])
    return str(ds.SOPInstanceUID), str(ds.SOPClassUID)


# --- admin commands (work on the database; the running service picks the change up) -----------------
def _engine(cfg: Config) -> Engine:
    return db.open_db(cfg.data_path / "dicomnode.db")


def retry_job(cfg: Config, job_id: int) -> tuple[bool, str]:
    engine = _engine(cfg)
    with engine.begin() as conn:
        row = conn.execute(select(db.jobs.c.state).where(db.jobs.c.id == job_id)).first()
        if row is None:
            return False, f"no job {job_id}"
        if row.state not in (JobState.FAILED.value, JobState.NO_INPUT.value):
            return False, f"job {job_id} is {row.state}; only failed or no_input jobs can be retried"
        conn.execute(update(db.sent_objects).where(db.sent_objects.c.job_id == job_id).values(status="superseded"))
        db.set_job_state(conn, job_id, JobState.QUEUED, "retried by admin", reason_code=None, reason=None,
                         finished=None, not_before=None)
    return True, f"job {job_id} queued again"


def reprocess_study(cfg: Config, study_uid: str) -> tuple[bool, str]:
    engine = _engine(cfg)
    with engine.begin() as conn:
        rev = conn.execute(select(func.max(db.jobs.c.revision)).where(db.jobs.c.study_uid == study_uid)).scalar()
        known = conn.execute(select(db.studies.c.study_uid).where(db.studies.c.study_uid == study_uid)).first()
        if known is None:
            return False, f"no study {study_uid}"
        active = conn.execute(select(db.jobs.c.id).where(
            db.jobs.c.study_uid == study_uid, db.jobs.c.state.not_in([s.value for s in FINAL_STATES]))).first()
        if active is not None:
            return False, f"study already has an unfinished job ({active.id})"
        job_id = new_job(conn, study_uid, (rev or 0) + 1, "reprocess requested by admin")
    return True, f"job {job_id} queued (revision {(rev or 0) + 1})"
