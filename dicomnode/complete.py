"""Stage 2, the completion rule: when has a study arrived? Driven by the scheduler's tick.

A study gets a waiting job when its first instance is indexed; the job is queued when the study has been quiet
long enough, when its sagittal T2 series is complete (earlier), or when the longest wait is reached. Instances
that arrive after a job ended start a new revision only when they change the selected series."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from dicomnode import logs, metrics
from dicomnode.config import Config
from dicomnode.selection import SelectionRecord
from dicomnode.selection import select as select_series
from storage import db, tallies
from storage.filestore import FileStore
from storage.states import FINAL_STATES, JobState

log = logs.get("dicomnode.complete")


class CompletionRule:
    def __init__(self, cfg: Config, engine: Engine, store: FileStore) -> None:
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self._early_cache: dict[tuple[str, int], tuple[bool, bool]] = {}

    def tick(self, now: float | None = None) -> None:
        now = now or time.time()
        sc = self.cfg.scheduler
        with self.engine.connect() as conn:  # only active studies, and only their jobs: indexed lookups
            studies = conn.execute(
                select(db.studies).where(db.studies.c.active == 1, db.studies.c.purged_at.is_(None))
            ).all()
            uids = [st.study_uid for st in studies]
            jobs: dict[str, Any] = {}
            for chunk in (uids[i : i + 500] for i in range(0, len(uids), 500)):
                latest = (
                    select(func.max(db.jobs.c.id)).where(db.jobs.c.study_uid.in_(chunk)).group_by(db.jobs.c.study_uid)
                )
                jobs.update((r.study_uid, r) for r in conn.execute(select(db.jobs).where(db.jobs.c.id.in_(latest))))
        settled: list[tuple[str, int]] = []
        for st in studies:
            job = jobs.get(st.study_uid)
            quiet = now - st.last_received
            if job is None:
                try:
                    with self.engine.begin() as conn:
                        db.new_job(conn, st.study_uid, 1, f"study arrived ({st.instances} instances)", JobState.WAITING)
                except IntegrityError:  # another worker's rule created it first (unique study, revision)
                    pass
                continue
            if job.state == JobState.WAITING.value:
                why = None
                if quiet >= sc.study_quiet_seconds:
                    why = f"study quiet for {quiet:.0f}s"
                elif now - st.first_received >= sc.max_wait_seconds:
                    why = f"maximum wait of {sc.max_wait_seconds:.0f}s reached"
                elif quiet >= min(sc.series_quiet_seconds, sc.announced_quiet_seconds):
                    complete, announced = self._series_complete(st.study_uid, st.instances)
                    if announced and quiet >= sc.announced_quiet_seconds:
                        why = f"sagittal T2 series complete with the count the scanner announced (quiet {quiet:.1f}s)"
                    elif complete and quiet >= sc.series_quiet_seconds:
                        why = f"sagittal T2 series complete (quiet {quiet:.1f}s)"
                if why:
                    with self.engine.begin() as conn:
                        db.set_job_state(conn, job.id, JobState.QUEUED, why, only_from=JobState.WAITING)
            elif job.state in FINAL_STATES:
                if job.input_instances is None or st.instances == job.input_instances:
                    settled.append((st.study_uid, st.instances))
                elif quiet >= sc.study_quiet_seconds:
                    self._maybe_new_revision(job, st)
        if settled:  # nothing to look at until an instance arrives (the receive path sets active again); one that
            # arrived since the read above keeps the study active (the instance count no longer matches)
            for chunk in (settled[i : i + 500] for i in range(0, len(settled), 500)):
                with self.engine.begin() as conn:  # short transactions: receivers write between them
                    tallies.settle(conn, chunk)
        with self.engine.connect() as conn:
            for state, n in db.open_job_counts(conn).items():
                metrics.JOBS.labels(state=state).set(n)

    def _series_complete(self, study_uid: str, instances: int) -> tuple[bool, bool]:
        """(complete-looking, provably complete) of the study's sagittal T2 series at this instance count."""
        key = (study_uid, instances)
        if key not in self._early_cache:
            with self.engine.connect() as conn:
                files = db.instance_paths(conn, self.store.root, study_uid)
            chosen = select_series(files)
            if len(self._early_cache) > 1000:
                self._early_cache.clear()
            self._early_cache[key] = (chosen.complete, chosen.announced)
        return self._early_cache[key]

    def _maybe_new_revision(self, job: Any, st: Any) -> None:
        """New instances after a finished job: a new revision only when they change the selected series."""
        with self.engine.connect() as conn:
            files = db.instance_paths(conn, self.store.root, st.study_uid)
        now_selected = select_series(files)
        before = SelectionRecord.from_json(job.selection)
        try:
            with self.engine.begin() as conn:
                if not before.changed_by(now_selected):
                    seen = update(db.jobs).where(
                        db.jobs.c.id == job.id, db.jobs.c.input_instances == job.input_instances
                    )
                    if conn.execute(seen.values(input_instances=st.instances)).rowcount:  # not done by another rule
                        added = st.instances - (job.input_instances or 0)
                        why = f"{added} new instance(s) did not change the selected series"
                        db.add_job_event(conn, job.id, job.state, why)
                    return
                revision = job.revision + 1
                new_id = db.new_job(
                    conn, st.study_uid, revision, f"new instances changed the selected series (revision {revision})"
                )
                db.add_job_event(conn, job.id, job.state, f"revision {revision} (job {new_id}) started")
        except IntegrityError:  # another worker's rule made this revision first
            return
        log.info("new job revision", study_uid=st.study_uid, job_id=new_id, revision=revision)
