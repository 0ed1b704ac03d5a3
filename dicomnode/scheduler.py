"""APScheduler drives the completion rule and retention; worker threads run jobs off the SCP's threads."""

from __future__ import annotations

import threading
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from ai.infer import Analyzer
from dicomnode import logs
from dicomnode.analyse import get_analyzer
from dicomnode.complete import CompletionRule
from dicomnode.config import Config
from dicomnode.worker import Worker
from storage import retention
from storage.filestore import FileStore

log = logs.get("dicomnode.scheduler")


class Scheduler:
    def __init__(self, cfg: Config, engine: Any, store: FileStore, owner: str | None = None) -> None:
        self.cfg = cfg
        self.engine, self.store = engine, store
        self.rule = CompletionRule(cfg, engine, store)
        self.worker = Worker(cfg, engine, store, self._analyzer, owner)
        self.aps = BackgroundScheduler(timezone="UTC")
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.workers: list[threading.Thread] = []
        self.model_version: str | None = None

    def _analyzer(self) -> Analyzer:
        """The configured model, loaded once per process (`get_analyzer` caches it): start and the jobs share it."""
        ai = self.cfg.ai
        return get_analyzer(ai.model, ai.device, ai.int8_graders)

    def start(self) -> None:
        resumed = self.worker.resume()
        if resumed:
            log.info("jobs resumed", count=resumed)
        try:  # load before work arrives; without a model the node still receives, and jobs say why they fail
            analyzer = self._analyzer()
            self.model_version = analyzer.version
            log.info(
                "model loaded",
                model_version=analyzer.version,
                device=str(analyzer.device),
                int8_graders=analyzer.int8_graders,
            )
        except Exception as exc:  # noqa: BLE001
            log.error("model not loaded", model=self.cfg.ai.model, error=f"{type(exc).__name__}: {exc}"[:300])
        self.aps.add_job(
            self._tick,
            "interval",
            seconds=self.cfg.scheduler.poll_seconds,
            max_instances=1,
            coalesce=True,
            id="completion",
        )
        self.aps.add_job(self._retention, "interval", minutes=10, max_instances=1, coalesce=True, id="retention")
        self.aps.add_job(
            self._renew,
            "interval",
            seconds=self.cfg.scheduler.lease_seconds / 3,
            max_instances=1,
            coalesce=True,
            id="leases",
        )
        self.aps.start()
        for i in range(self.cfg.scheduler.workers):
            t = threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            t.start()
            self.workers.append(t)

    def _tick(self) -> None:
        try:
            self.rule.tick()
        except Exception as exc:  # noqa: BLE001 - e.g. the database locked by another process for a while
            log.warning("completion check failed", error=type(exc).__name__)
            return
        self.wake.set()

    def _renew(self) -> None:
        try:
            self.worker.renew()
        except Exception as exc:  # noqa: BLE001 - the database away for a moment: the next renewal comes soon
            log.warning("lease renewal failed", error=type(exc).__name__)

    def _retention(self) -> None:
        node = self.cfg.node
        try:
            done = retention.apply(self.engine, self.store, node.retention_days * 86400, node.purge_free_bytes)
            done.update(
                retention.expire_history(
                    self.engine, self.store, node.results_retention_days * 86400, node.history_retention_days * 86400
                )
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("retention failed", error=type(exc).__name__)
            return
        if any(done.values()):
            log.info("retention", **done)

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                claimed = self.worker.claim()
                if claimed is None:
                    self.wake.wait(self.cfg.scheduler.poll_seconds)
                    self.wake.clear()
                    continue
                self.worker.work(*claimed)
            except Exception as exc:  # noqa: BLE001 - a worker never dies; the job keeps its state and resumes
                logs.failure(log, "worker error", exc)
                self.stopping.wait(self.cfg.scheduler.poll_seconds)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.aps.shutdown(wait=False)
        for t in self.workers:
            t.join(timeout=60)
