"""Job states: the one place they are named."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    WAITING = "waiting"  # study still receiving
    QUEUED = "queued"  # ready, waiting for a worker
    RUNNING = "running"  # selection + inference + report writing
    SENDING = "sending"  # results written, being sent
    DONE = "done"
    FAILED = "failed"
    NO_INPUT = "no_input"  # nothing usable in the study
    SUPERSEDED = "superseded"  # a newer revision of the study's job replaced it


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.NO_INPUT, JobState.SUPERSEDED})
