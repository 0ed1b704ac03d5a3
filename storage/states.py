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
    REJECTED = "rejected"  # a reviewer retracted its results: a rejection note (KOS) went where they had gone


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.NO_INPUT, JobState.SUPERSEDED, JobState.REJECTED})


# Every reason code a job (or `dicomnode analyze`'s `error: <code>: <reason>`) can end with: a stable contract,
# documented here and nowhere else (README and the conformance statement point to this list).
REASONS: dict[str, str] = {
    "no_input": "the study holds no sagittal T2 series to analyse (the reason names what was found)",
    "not_2d": "the chosen slice is not one 2-D grey frame",
    "too_large": "the chosen slice exceeds the pixel limit",
    "unreadable_pixels": "the chosen slice's pixel data is missing or cannot be decoded",
    "no_slice": "no candidate slice of the chosen series could be read",
    "orientation": "the slice orientation is missing, malformed, not sagittal or 45 degrees off both axes",
    "model_unavailable": "the model's weights are missing or cannot be loaded",
    "report_error": "the SR, GSPS or secondary capture could not be built from this slice",
    "internal_error": "an unexpected error in the analysis (its type and place are logged)",
    "crashed_repeatedly": "the job's worker died on it too many times; it is not tried again by itself",
    "send_unreachable": "a destination could not be reached within the retries",
    "send_refused": "a destination refused the results",
}
