"""The completion rule and one worker, driven by hand as the scheduler drives them (its tick and its threads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicomnode.complete import CompletionRule
from dicomnode.config import Config
from dicomnode.worker import Worker
from storage.filestore import FileStore


@dataclass
class Stages:
    rule: CompletionRule
    worker: Worker

    @classmethod
    def of(cls, cfg: Config, engine: Any, store: FileStore, analyzer: Any) -> Stages:
        return cls(CompletionRule(cfg, engine, store), Worker(cfg, engine, store, lambda: analyzer))

    @property
    def engine(self) -> Any:
        return self.worker.engine

    @property
    def store(self) -> FileStore:
        return self.worker.store

    def tick(self, now: float | None = None) -> None:
        self.rule.tick(now)

    def drain(self) -> None:
        """Every claimable job, one after another (a retry that is not due stays for later)."""
        while (claimed := self.worker.claim()) is not None:
            self.worker.work(*claimed)


# What migrations 0004 and 0003 added, dropped again by the tests that rebuild an older database (SQLite)
UNDO_0004 = ("DROP TABLE review_levels", "DROP TABLE reviews", "DROP TABLE audit")
UNDO_0003 = (
    *UNDO_0004,
    "DROP TRIGGER tally_jobs_insert",
    "DROP TRIGGER tally_jobs_update",
    "DROP TRIGGER tally_jobs_delete",
    "DROP TABLE tallies",
    "DROP INDEX ix_instances_received",
    "DROP INDEX ix_jobs_finished",
    "DROP INDEX ix_associations_started",
    "ALTER TABLE studies DROP COLUMN tallied",
)
