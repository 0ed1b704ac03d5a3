"""The radiologist in the loop: reviews (one per job and reviewer) with their per-disc verdicts, the audit table, and
the tally of the new final state `rejected`.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("chain_shift", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_index("ux_reviews_job_reviewer", "reviews", ["job_id", "reviewer"], unique=True)
    op.create_index("ix_reviews_updated", "reviews", ["updated"])
    said = [
        sa.Column(f"{who}{name}", kind, nullable=nullable)
        for who in ("node_", "")
        for name, kind, nullable in (
            ("call", sa.String(16), False),
            ("schmorl", sa.Integer(), False),
            ("pfirrmann", sa.Integer(), True),
            ("stenosis", sa.Integer(), True),
            ("x", sa.Float(), False),
            ("y", sa.Float(), False),
        )
    ]
    op.create_table(
        "review_levels",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("review_id", sa.Integer(), sa.ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        *said,
    )
    op.create_index("ix_review_levels_review", "review_levels", ["review_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("username", sa.String(64)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("job_id", sa.Integer()),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    # 0003 run by this version already made the row (its tally names follow the states)
    op.execute(
        "INSERT INTO tallies (name, value) SELECT 'jobs:rejected', 0"
        " WHERE NOT EXISTS (SELECT 1 FROM tallies WHERE name = 'jobs:rejected')"
    )
