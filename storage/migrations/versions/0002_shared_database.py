"""Several processes on one database: studies.active (the completion rule reads only those), job leases, one job
per (study, revision), and the nodes table of heartbeats.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("active", sa.Integer(), nullable=False, server_default="1"))
    op.execute("UPDATE studies SET active = 0 WHERE purged_at IS NOT NULL")  # removed by retention: nothing to do
    op.create_index("ix_studies_active", "studies", ["active"])
    _renumber_duplicate_revisions()
    op.add_column("jobs", sa.Column("lease_owner", sa.String(128)))
    op.add_column("jobs", sa.Column("lease_until", sa.Float()))
    op.create_index("ix_jobs_lease_owner", "jobs", ["lease_owner"])
    op.create_index("ux_jobs_study_revision", "jobs", ["study_uid", "revision"], unique=True)
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("host", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started", sa.Float(), nullable=False),
        sa.Column("heartbeat", sa.Float(), nullable=False),
        sa.Column("stopped", sa.Float()),
    )


def _renumber_duplicate_revisions() -> None:
    """Before the unique index: two jobs of one (study, revision), which an admin's reprocess racing the completion
    rule could make before, get the next free revisions (later jobs renumbered, nothing deleted)."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, study_uid, revision FROM jobs ORDER BY study_uid, id")).all()
    seen: dict[str, set[int]] = {}
    top: dict[str, int] = {}
    for _, study, revision in rows:
        top[study] = max(top.get(study, 0), revision)
    for job_id, study, revision in rows:
        taken = seen.setdefault(study, set())
        if revision in taken:
            top[study] += 1
            conn.execute(sa.text("UPDATE jobs SET revision = :r WHERE id = :i"), {"r": top[study], "i": job_id})
            revision = top[study]
        taken.add(revision)
