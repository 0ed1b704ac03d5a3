"""The schema dicomnode 0.1 created (SQLite, PRAGMA user_version 1): tables instances, studies, associations, jobs,
job_events, sent_objects. Nothing to do: such a database is stamped with this revision, then upgraded.

Revision ID: 0001
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass
